//! The operator-facing admin API (`tollgate.admin.v1.Admin`).
//!
//! Every write goes through [`Model::write`] (validated, committed, fsynced,
//! then published); every read, and every write's response, shows entities in
//! their redacted form, so API keys, HMAC secrets and private keys never leave
//! the control plane here. Errors are [`CpError`]s, mapped to a status in
//! `crate::error`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::admin::admin_server::Admin;
use tollgate_shared::proto::admin::{
    ApplyRequest, ApplyResponse, CreateTokenRequest, CreateTokenResponse, DataPlaneRollout,
    EntityRef, EntityRequest, EntityResponse, ExportRequest, ExportResponse, GetStatsRequest,
    GetStatsResponse, HistoryRequest, HistoryResponse, ListAuditRequest, ListAuditResponse,
    ListDataPlanesRequest, ListDataPlanesResponse, ListRequest, ListResponse, ListTokensRequest,
    ListTokensResponse, PurgeCacheRequest, PurgeCacheResponse, Revision, RevokeTokenRequest,
    RevokeTokenResponse, RollbackRequest, WaitForVersionRequest,
};
use tollgate_shared::proto::admin::{
    CreateJoinTokenRequest, CreateJoinTokenResponse, ListJoinTokensRequest, ListJoinTokensResponse,
    RevokeDataPlaneRequest, RevokeDataPlaneResponse,
};
use tollgate_shared::proto::admin::{
    CreateOperatorCertRequest, CreateOperatorCertResponse, ListOperatorCertsRequest,
    ListOperatorCertsResponse, RevokeOperatorCertRequest, RevokeOperatorCertResponse,
};
use tollgate_shared::proto::config as pb_config;
use tollgate_shared::proto::stream::CachePurge;
use tonic::{Request, Response, Status};

use crate::access::{Role, TokenBook};
use crate::audit::AuditLog;
use crate::auth::Actor;
use crate::diff::Change;
use crate::entity::{self, Entity};
use crate::error::CpError;
use crate::kind::EntityKind;
use crate::model::{Author, Model, WriteOutcome};
use crate::pki::enroll::Enrollment;
use crate::stream::registry::Registry;
use crate::stream::rollout;
use crate::usage::{self, Usage};

pub struct AdminService {
    model: Arc<Model>,
    registry: Arc<Registry>,
    tokens: Arc<TokenBook>,
    audit: Arc<AuditLog>,
    usage: Arc<Usage>,
    /// The cluster PKI: join tokens and revocation.
    cluster: Option<Arc<Enrollment>>,
}

impl AdminService {
    /// Serves the join-token and revocation calls from `cluster`.
    pub fn with_cluster(mut self, cluster: Arc<Enrollment>) -> AdminService {
        self.cluster = Some(cluster);
        self
    }

    fn cluster(&self) -> Result<&Enrollment, CpError> {
        self.cluster
            .as_deref()
            .ok_or_else(|| CpError::FailedPrecondition("no cluster PKI on this server".into()))
    }

    pub fn new(
        model: Arc<Model>,
        registry: Arc<Registry>,
        tokens: Arc<TokenBook>,
        audit: Arc<AuditLog>,
        usage: Arc<Usage>,
    ) -> AdminService {
        AdminService {
            model,
            registry,
            tokens,
            audit,
            usage,
            cluster: None,
        }
    }

    /// Records a committed write in the audit log (nothing for a no-op or a
    /// dry run).
    async fn audit_write(&self, actor: &Actor, call: &str, outcome: &WriteOutcome) {
        if outcome.changes.is_empty() {
            return;
        }
        self.audit
            .config_write(
                actor,
                call,
                outcome.version.revision,
                &outcome.changes,
                &outcome.previous,
                &outcome.config,
            )
            .await;
    }

    /// The response to a single-entity write: the new version, and the entity
    /// as stored (redacted), if it still exists.
    fn entity_response(outcome: &WriteOutcome, kind: EntityKind, name: &str) -> EntityResponse {
        EntityResponse {
            version: Some(outcome.version.to_pb()),
            entity: entity::find(&outcome.config, kind, name).map(|e| e.redacted().to_pb()),
            warnings: outcome.warnings.clone(),
        }
    }
}

/// A service still named by routes cannot be deleted alone: say which
/// routes, rather than the validation error about the route.
fn refuse_if_used(config: &GatewayConfig, service: &str) -> Result<(), CpError> {
    let users: Vec<&str> = config
        .routes
        .iter()
        .filter(|r| r.service == service)
        .map(|r| r.name.as_str())
        .collect();
    let Some(first) = users.first() else {
        return Ok(());
    };
    let more = match users.len() - 1 {
        0 => String::new(),
        n => format!(" and {n} more route(s)"),
    };
    Err(CpError::BadRequest(format!(
        "service {} is used by route {}{more}: delete or move those routes first",
        tollgate_shared::limits::show(service),
        tollgate_shared::limits::show(first)
    )))
}

fn apply_response(outcome: WriteOutcome, dry_run: bool) -> ApplyResponse {
    ApplyResponse {
        changes: outcome.changes.iter().map(Change::to_pb).collect(),
        version: Some(outcome.version.to_pb()),
        dry_run,
        warnings: outcome.warnings,
    }
}

/// Runs CPU-bound work for a read on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CpError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CpError::Internal(format!("read task failed: {e}")))
}

fn kind_of(raw: i32) -> Result<EntityKind, CpError> {
    EntityKind::from_pb(raw).ok_or_else(|| {
        CpError::BadRequest(
            "kind: must be one of KIND_SERVICE, KIND_ROUTE, KIND_CONSUMER, KIND_PLUGIN, \
             KIND_CERTIFICATE"
                .into(),
        )
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    type WaitForVersionStream = ReceiverStream<Result<DataPlaneRollout, Status>>;

    async fn create(
        &self,
        request: Request<EntityRequest>,
    ) -> Result<Response<EntityResponse>, Status> {
        let actor = Actor::of(&request);
        let author = Author::new(actor.name.clone());
        let new = Entity::from_pb(request.into_inner().entity)?;
        let (kind, name) = (new.kind(), new.name().to_string());
        let taken = name.clone();
        let outcome = self
            .model
            .write_as(author, false, move |config| {
                if entity::find(config, kind, &taken).is_some() {
                    return Err(CpError::AlreadyExists { kind, name: taken });
                }
                entity::insert(config, new);
                Ok(())
            })
            .await?;
        self.audit_write(&actor, "Create", &outcome).await;
        Ok(Response::new(Self::entity_response(&outcome, kind, &name)))
    }

    async fn update(
        &self,
        request: Request<EntityRequest>,
    ) -> Result<Response<EntityResponse>, Status> {
        let actor = Actor::of(&request);
        let author = Author::new(actor.name.clone());
        let new = Entity::from_pb(request.into_inner().entity)?;
        let (kind, name) = (new.kind(), new.name().to_string());
        let missing = name.clone();
        let outcome = self
            .model
            .write_as(author, false, move |config| {
                if entity::replace(config, new) {
                    Ok(())
                } else {
                    Err(CpError::NotFound {
                        kind,
                        name: missing,
                    })
                }
            })
            .await?;
        self.audit_write(&actor, "Update", &outcome).await;
        Ok(Response::new(Self::entity_response(&outcome, kind, &name)))
    }

    async fn get(
        &self,
        request: Request<EntityRef>,
    ) -> Result<Response<tollgate_shared::proto::admin::Entity>, Status> {
        let reference = request.into_inner();
        let kind = kind_of(reference.kind)?;
        let current = self.model.current();
        let found =
            entity::find(&current.config, kind, &reference.name).ok_or(CpError::NotFound {
                kind,
                name: reference.name,
            })?;
        Ok(Response::new(found.redacted().to_pb()))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let kind = kind_of(request.into_inner().kind)?;
        let current = self.model.current();
        // Listing 100,000 routes is CPU work: off the async workers.
        let entities = blocking(move || {
            entity::list(&current.config, kind)
                .into_iter()
                .map(|e| e.redacted().to_pb())
                .collect()
        })
        .await?;
        Ok(Response::new(ListResponse { entities }))
    }

    async fn delete(
        &self,
        request: Request<EntityRef>,
    ) -> Result<Response<EntityResponse>, Status> {
        let actor = Actor::of(&request);
        let author = Author::new(actor.name.clone());
        let reference = request.into_inner();
        let kind = kind_of(reference.kind)?;
        let name = reference.name;
        let outcome = self
            .model
            .write_as(author, false, move |config| {
                if kind == EntityKind::Service {
                    refuse_if_used(config, &name)?;
                }
                if entity::remove(config, kind, &name) {
                    Ok(())
                } else {
                    Err(CpError::NotFound { kind, name })
                }
            })
            .await?;
        self.audit_write(&actor, "Delete", &outcome).await;
        Ok(Response::new(EntityResponse {
            version: Some(outcome.version.to_pb()),
            entity: None,
            warnings: outcome.warnings,
        }))
    }

    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let actor = Actor::of(&request);
        let author = Author::new(actor.name.clone());
        let request = request.into_inner();
        if !request.dry_run {
            // The gate lets viewers through for dry runs (diffs are reads).
            actor.require(Role::Editor, "Apply")?;
        }
        // A missing config is a broken request, not "delete everything"; an
        // empty one is an explicit wipe.
        let wire = request
            .config
            .ok_or_else(|| CpError::BadRequest("config: required".into()))?;
        // Converted on the write's blocking thread, with the rest of the
        // CPU-bound work (a large Apply must not hold an async worker).
        let select_tag = request.select_tag;
        if !select_tag.is_empty() {
            crate::select_tag::check(&select_tag)?;
        }
        let outcome = self
            .model
            .write_as(author, request.dry_run, move |config| {
                let file = GatewayConfig::try_from(&wire)?;
                drop(wire);
                *config = if select_tag.is_empty() {
                    file
                } else {
                    crate::select_tag::merge(config, file, &select_tag)?
                };
                Ok(())
            })
            .await?;
        if !request.dry_run {
            self.audit_write(&actor, "Apply", &outcome).await;
        }
        Ok(Response::new(apply_response(outcome, request.dry_run)))
    }

    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<ExportResponse>, Status> {
        let revision = request.into_inner().revision;
        let (state, current) = self.model.state_at(revision).await?;
        let response = blocking(move || {
            let mut config = state.redacted();
            config.sort();
            let version = tollgate_shared::proto::config::ConfigVersion {
                store_id: current.store_id,
                revision: if revision == 0 {
                    current.revision
                } else {
                    revision
                },
            };
            ExportResponse {
                config: Some(pb_config::GatewayConfig::from(&config)),
                version: Some(version),
            }
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn purge_cache(
        &self,
        request: Request<PurgeCacheRequest>,
    ) -> Result<Response<PurgeCacheResponse>, Status> {
        let PurgeCacheRequest { route, key } = request.into_inner();
        let current = self.model.current();
        if !current.config.routes.iter().any(|r| r.name == route) {
            return Err(Status::not_found(format!(
                "route {}: not found",
                tollgate_shared::limits::show(&route)
            )));
        }
        if !key.is_empty() && (key.len() != 32 || !key.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(Status::invalid_argument(
                "key: must be the 32 hex digits of an X-Cache-Key",
            ));
        }
        let key = key.to_ascii_lowercase();
        tracing::info!(route = %route, key = %key, "cache purge requested");
        let sent = self.registry.purge_cache(CachePurge { route, key });
        Ok(Response::new(PurgeCacheResponse {
            data_planes: u32::try_from(sent).unwrap_or(u32::MAX),
        }))
    }

    async fn list_data_planes(
        &self,
        _request: Request<ListDataPlanesRequest>,
    ) -> Result<Response<ListDataPlanesResponse>, Status> {
        Ok(Response::new(ListDataPlanesResponse {
            data_planes: self.registry.list(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let role = Role::from_pb(request.role)?;
        let (token, secret) = self.tokens.create(&request.name, role, &actor.name).await?;
        tracing::info!(name = %token.name, %role, by = %actor.name, "admin token created");
        self.audit
            .event(
                &actor,
                "CreateToken",
                format!("created token {:?} with role {role}", token.name),
            )
            .await;
        Ok(Response::new(CreateTokenResponse {
            token: Some(token),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let tokens = self.tokens.clone();
        let tokens = blocking(move || tokens.list()).await??;
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let actor = Actor::of(&request);
        let name = request.into_inner().name;
        let revoked = self.tokens.revoke(&name).await?;
        tracing::info!(name = %revoked.name, by = %actor.name, "admin token revoked");
        self.audit
            .event(
                &actor,
                "RevokeToken",
                format!("revoked token {:?}", revoked.name),
            )
            .await;
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let actor = Actor::of(&request);
        let cluster = self.cluster()?;
        let ttl = request.into_inner().ttl_seconds;
        let (token, info) = cluster
            .joins
            .create(ttl, &cluster.pki.ca_pin(), &actor.name)
            .await?;
        tracing::info!(token_id = %info.id, ttl_seconds = ttl, by = %actor.name, "join token created");
        self.audit
            .event(
                &actor,
                "CreateJoinToken",
                format!("created join token {} valid {ttl} s", info.id),
            )
            .await;
        Ok(Response::new(CreateJoinTokenResponse {
            token,
            info: Some(info),
        }))
    }

    async fn list_join_tokens(
        &self,
        _request: Request<ListJoinTokensRequest>,
    ) -> Result<Response<ListJoinTokensResponse>, Status> {
        let joins = self.cluster()?.joins.clone();
        let list = blocking(move || joins.list()).await??;
        Ok(Response::new(list))
    }

    async fn revoke_data_plane(
        &self,
        request: Request<RevokeDataPlaneRequest>,
    ) -> Result<Response<RevokeDataPlaneResponse>, Status> {
        let actor = Actor::of(&request);
        let node_id = request.into_inner().node_id;
        let connected = self
            .registry
            .list()
            .iter()
            .filter(|plane| plane.node_id == node_id && plane.connected)
            .count();
        self.cluster()?.joins.revoke(&node_id, &actor.name).await?;
        tracing::warn!(node_id = %node_id, by = %actor.name, "data plane revoked");
        self.audit
            .event(
                &actor,
                "RevokeDataPlane",
                format!("revoked data plane {node_id:?}"),
            )
            .await;
        Ok(Response::new(RevokeDataPlaneResponse {
            closed_streams: u32::try_from(connected).unwrap_or(u32::MAX),
        }))
    }

    async fn create_operator_cert(
        &self,
        request: Request<CreateOperatorCertRequest>,
    ) -> Result<Response<CreateOperatorCertResponse>, Status> {
        use crate::pki::operators::{MAX_TTL_SECS, MIN_TTL_SECS};
        let actor = Actor::of(&request);
        let cluster = self.cluster()?;
        let request = request.into_inner();
        let role = Role::from_pb(request.role)?;
        if !(MIN_TTL_SECS..=MAX_TTL_SECS).contains(&request.ttl_seconds) {
            return Err(CpError::BadRequest(format!(
                "ttl_seconds: must be {MIN_TTL_SECS} to {MAX_TTL_SECS} (365 days)"
            ))
            .into());
        }
        let (cert_pem, id) = cluster.pki.sign_operator(
            &request.csr_pem,
            &request.name,
            role,
            Duration::from_secs(request.ttl_seconds),
        )?;
        let info = cluster.operators.record(&id, &actor.name).await?;
        tracing::info!(operator = %id.name, %role, serial = %id.serial, by = %actor.name, "operator certificate issued");
        self.audit
            .event(
                &actor,
                "CreateOperatorCert",
                format!(
                    "issued an operator certificate for {:?} with role {role}, serial {}, valid {} s",
                    id.name, id.serial, request.ttl_seconds
                ),
            )
            .await;
        Ok(Response::new(CreateOperatorCertResponse {
            cert_pem,
            ca_pem: cluster.pki.ca_pem().to_string(),
            info: Some(info),
        }))
    }

    async fn list_operator_certs(
        &self,
        _request: Request<ListOperatorCertsRequest>,
    ) -> Result<Response<ListOperatorCertsResponse>, Status> {
        let operators = self.cluster()?.operators.clone();
        let list = blocking(move || operators.list()).await??;
        Ok(Response::new(list))
    }

    async fn revoke_operator_cert(
        &self,
        request: Request<RevokeOperatorCertRequest>,
    ) -> Result<Response<RevokeOperatorCertResponse>, Status> {
        let actor = Actor::of(&request);
        let what = request.into_inner().name_or_serial;
        let revoked = self.cluster()?.operators.revoke(&what, &actor.name).await?;
        let serials: Vec<&str> = revoked.iter().map(|c| c.serial.as_str()).collect();
        tracing::warn!(what = %what, ?serials, by = %actor.name, "operator certificate revoked");
        self.audit
            .event(
                &actor,
                "RevokeOperatorCert",
                format!(
                    "revoked operator certificate(s) {}: {}",
                    tollgate_shared::limits::show(&what),
                    if serials.is_empty() {
                        "a serial issued elsewhere".to_string()
                    } else {
                        serials.join(", ")
                    }
                ),
            )
            .await;
        Ok(Response::new(RevokeOperatorCertResponse { revoked }))
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        let request = request.into_inner();
        let audit = self.audit.clone();
        let entries = blocking(move || audit.list(request.since_ms, request.limit)).await??;
        Ok(Response::new(ListAuditResponse { entries }))
    }

    async fn wait_for_version(
        &self,
        request: Request<WaitForVersionRequest>,
    ) -> Result<Response<Self::WaitForVersionStream>, Status> {
        let request = request.into_inner();
        let target = match request.version {
            Some(version) => version,
            None => self.model.current().version.to_pb(),
        };
        let timeout = match request.timeout_ms {
            0 => rollout::DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        if timeout > rollout::MAX_TIMEOUT {
            return Err(
                CpError::BadRequest("timeout_ms: must be at most 3600000 (1 h)".into()).into(),
            );
        }
        let (events, receiver) = mpsc::channel(16);
        tokio::spawn(rollout::wait_for(
            self.registry.clone(),
            target,
            timeout,
            events,
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let version = self.model.current().version.to_pb();
        let revisions = self
            .model
            .history(limit)
            .await?
            .into_iter()
            .map(|record| Revision {
                revision: record.revision,
                at_ms: record.at_ms,
                actor: record.actor,
                note: record.note,
                changes: record
                    .changes
                    .into_iter()
                    .map(|c| {
                        Change {
                            kind: c.kind,
                            name: c.name,
                            action: c.action,
                        }
                        .to_pb()
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(HistoryResponse {
            revisions,
            version: Some(version),
        }))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let actor = Actor::of(&request);
        let mut author = Author::new(actor.name.clone());
        let request = request.into_inner();
        if request.revision == 0 {
            return Err(CpError::BadRequest("revision: required (at least 1)".into()).into());
        }
        let (state, _) = self.model.state_at(request.revision).await?;
        author.note = format!("rollback to revision {}", request.revision);
        let outcome = self
            .model
            .write_as(author, request.dry_run, move |config| {
                *config = GatewayConfig::clone(&state);
                Ok(())
            })
            .await?;
        if !request.dry_run {
            self.audit_write(&actor, "Rollback", &outcome).await;
        }
        Ok(Response::new(apply_response(outcome, request.dry_run)))
    }

    async fn get_stats(
        &self,
        request: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        let request = request.into_inner();
        let query = usage::StatsQuery::from_request(
            &request.by,
            request.since_seconds,
            &request.route,
            request.top,
        )?;
        let usage = self.usage.clone();
        let report = blocking(move || usage.stats(&query)).await?;
        let json = serde_json::to_string(&report)
            .map_err(|e| CpError::Internal(format!("encoding stats: {e}")))?;
        Ok(Response::new(GetStatsResponse { json }))
    }
}
