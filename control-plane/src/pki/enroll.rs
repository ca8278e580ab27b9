//! `Join`, `Renew`, and who may `Subscribe`: the stream side of the
//! cluster PKI.
//!
//! - `Join` (no client certificate): the CSR is signed first (its CN is the
//!   node id), then the token is checked (format, CA pin, node not revoked)
//!   and used atomically; only then is the certificate returned. A refused
//!   join is logged with the peer, the node id and the token's id (a digest
//!   prefix, never the token) and counted by reason.
//! - `Renew`: the connection's verified certificate names the node; the new
//!   CSR must name the same one.
//! - `Subscribe` on a TLS stream needs a data-plane certificate whose node
//!   is not revoked; that node id is the one the session records, whatever
//!   the hello says.

use std::sync::Arc;

use tollgate_shared::proto::stream::{CertificateResponse, JoinRequest, RenewRequest};
use tonic::{Request, Status};

use super::joins::{JoinBook, Refusal};
use super::{ClusterPki, Issued};
use crate::error::CpError;
use crate::listener::PeerNode;
use crate::metrics::CpMetrics;

/// What the stream service needs for the cluster PKI.
pub struct Enrollment {
    pub pki: Arc<ClusterPki>,
    pub joins: Arc<JoinBook>,
    /// Issued and revoked operator certificates (admin API).
    pub operators: Arc<super::operators::OperatorBook>,
    pub metrics: Arc<CpMetrics>,
    /// Whether the stream is served over TLS (else `Join`/`Renew` are refused
    /// and `Subscribe` needs no certificate: the loopback quickstart).
    pub tls: bool,
}

fn peer_text<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".into(), |p| p.to_string())
}

impl Enrollment {
    fn refuse(&self, peer: &str, node_id: &str, reason: &'static str, message: &str) {
        tracing::warn!(%peer, node_id, reason, "config stream refused: {message}");
        self.metrics.stream_refused(reason);
    }

    fn response(&self, issued: Issued) -> CertificateResponse {
        CertificateResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: self.pki.ca_pem().to_string(),
            not_after: issued.not_after,
            node_id: issued.node_id,
        }
    }

    fn need_tls(&self) -> Result<(), CpError> {
        if self.tls {
            Ok(())
        } else {
            Err(CpError::FailedPrecondition(
                "the config stream is plaintext (loopback): start tollgate-cp with --stream-tls \
                 to join data planes"
                    .into(),
            ))
        }
    }

    pub async fn join(&self, request: Request<JoinRequest>) -> Result<CertificateResponse, Status> {
        self.need_tls()?;
        let peer = peer_text(&request);
        let JoinRequest { token, csr_pem } = request.into_inner();
        let issued = self.pki.sign(&csr_pem, None).inspect_err(|err| {
            self.refuse(&peer, "-", "bad_csr", &err.to_string());
        })?;
        let refused = |refusal: Refusal| -> Status {
            self.refuse(&peer, &issued.node_id, refusal.label(), refusal.message());
            match refusal {
                Refusal::Revoked => CpError::PermissionDenied(refusal.message().into()),
                _ => CpError::JoinRefused(refusal.message().into()),
            }
            .into()
        };
        let key = self
            .joins
            .check(&token, &self.pki.ca_pin(), &issued.node_id)
            .map_err(refused)?;
        let used = self
            .joins
            .consume(&key, &issued.node_id)
            .await
            .map_err(refused)?;
        tracing::info!(
            %peer,
            node_id = %issued.node_id,
            token_id = %used.id,
            not_after = issued.not_after,
            "data plane joined"
        );
        Ok(self.response(issued))
    }

    pub async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<CertificateResponse, Status> {
        self.need_tls()?;
        let node = self.authenticated(&request)?;
        let issued = self.pki.sign(&request.get_ref().csr_pem, Some(&node))?;
        tracing::info!(node_id = %node, not_after = issued.not_after, "data plane certificate renewed");
        Ok(self.response(issued))
    }

    /// The node a call on the TLS stream comes from: its certificate's node
    /// id, if not revoked.
    pub fn authenticated<T>(&self, request: &Request<T>) -> Result<String, CpError> {
        let peer = peer_text(request);
        let Some(PeerNode(node)) = request.extensions().get::<PeerNode>() else {
            let message = "no data-plane certificate: the config stream needs a client \
                           certificate from the cluster CA (start tollgate-dp with --join-token \
                           and --state-dir)";
            self.refuse(&peer, "-", "no_client_certificate", message);
            return Err(CpError::JoinRefused(message.into()));
        };
        if self.joins.is_revoked(node) {
            let message = format!("data plane {node:?} is revoked");
            self.refuse(&peer, node, "revoked", &message);
            return Err(CpError::PermissionDenied(message));
        }
        Ok(node.to_string())
    }

    /// Who may subscribe: `Some(node)` on a TLS stream, `None` (anyone the
    /// cluster token lets in) on a plaintext one.
    pub fn subscriber<T>(&self, request: &Request<T>) -> Result<Option<String>, CpError> {
        if self.tls {
            self.authenticated(request).map(Some)
        } else {
            Ok(None)
        }
    }
}
