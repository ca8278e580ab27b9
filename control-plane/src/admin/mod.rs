//! The operator-facing admin API (`tollgate.admin.v1.Admin`).
//!
//! Every write goes through [`Model::write`] (validated, committed, fsynced,
//! then published); every read, and every write's response, shows entities in
//! their redacted form, so API keys, HMAC secrets and private keys never leave
//! the control plane here. Errors are [`CpError`]s, mapped to a status in
//! `crate::error`.

use std::sync::Arc;

use tollgate_shared::model::GatewayConfig;
use tollgate_shared::proto::admin::admin_server::Admin;
use tollgate_shared::proto::admin::{
    ApplyRequest, ApplyResponse, EntityRef, EntityRequest, EntityResponse, ExportRequest,
    ExportResponse, ListDataPlanesRequest, ListDataPlanesResponse, ListRequest, ListResponse,
    PurgeCacheRequest, PurgeCacheResponse,
};
use tollgate_shared::proto::config as pb_config;
use tollgate_shared::proto::stream::CachePurge;
use tonic::{Request, Response, Status};

use crate::entity::{self, Entity};
use crate::error::CpError;
use crate::kind::EntityKind;
use crate::model::{Model, WriteOutcome};
use crate::stream::registry::Registry;

pub struct AdminService {
    model: Arc<Model>,
    registry: Arc<Registry>,
}

impl AdminService {
    pub fn new(model: Arc<Model>, registry: Arc<Registry>) -> AdminService {
        AdminService { model, registry }
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
    async fn create(
        &self,
        request: Request<EntityRequest>,
    ) -> Result<Response<EntityResponse>, Status> {
        let new = Entity::from_pb(request.into_inner().entity)?;
        let (kind, name) = (new.kind(), new.name().to_string());
        let taken = name.clone();
        let outcome = self
            .model
            .write(false, move |config| {
                if entity::find(config, kind, &taken).is_some() {
                    return Err(CpError::AlreadyExists { kind, name: taken });
                }
                entity::insert(config, new);
                Ok(())
            })
            .await?;
        Ok(Response::new(Self::entity_response(&outcome, kind, &name)))
    }

    async fn update(
        &self,
        request: Request<EntityRequest>,
    ) -> Result<Response<EntityResponse>, Status> {
        let new = Entity::from_pb(request.into_inner().entity)?;
        let (kind, name) = (new.kind(), new.name().to_string());
        let missing = name.clone();
        let outcome = self
            .model
            .write(false, move |config| {
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
        let reference = request.into_inner();
        let kind = kind_of(reference.kind)?;
        let name = reference.name;
        let outcome = self
            .model
            .write(false, move |config| {
                if entity::remove(config, kind, &name) {
                    Ok(())
                } else {
                    Err(CpError::NotFound { kind, name })
                }
            })
            .await?;
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
        let request = request.into_inner();
        // A missing config is a broken request, not "delete everything"; an
        // empty one is an explicit wipe.
        let wire = request
            .config
            .ok_or_else(|| CpError::BadRequest("config: required".into()))?;
        // Converted on the write's blocking thread, with the rest of the
        // CPU-bound work (a large Apply must not hold an async worker).
        let outcome = self
            .model
            .write(request.dry_run, move |config| {
                *config = GatewayConfig::try_from(&wire)?;
                drop(wire);
                Ok(())
            })
            .await?;
        Ok(Response::new(ApplyResponse {
            changes: outcome.changes.iter().map(|c| c.to_pb()).collect(),
            version: Some(outcome.version.to_pb()),
            dry_run: request.dry_run,
            warnings: outcome.warnings,
        }))
    }

    async fn export(
        &self,
        _request: Request<ExportRequest>,
    ) -> Result<Response<ExportResponse>, Status> {
        let current = self.model.current();
        let response = blocking(move || {
            let mut config = current.config.redacted();
            config.sort();
            ExportResponse {
                config: Some(pb_config::GatewayConfig::from(&config)),
                version: Some(current.version.to_pb()),
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
}
