//! The TLS client certificate of a request's connection.
//!
//! A certificate is negotiated once per connection, but routes (and so the
//! CAs a route trusts) differ per request, and HTTP/2 multiplexes requests
//! for different hosts and routes on one connection. So the listener only
//! *requests* a certificate during the handshake (checking that the client
//! holds its key), and every request carries the connection's chain here,
//! in the request's extensions (never in a header, so a client cannot forge
//! it); the route's authentication plugin verifies it against its own CAs
//! on every request.
//!
//! Verifying a chain per request would cost a few signature checks each
//! time, so a plugin keeps its verdict on the connection's certificate
//! ([`ClientCertificate::memo`]), keyed by the plugin instance's
//! process-unique id: a new snapshot (new CAs, a new CRL) builds new
//! instances with new ids, so verdicts are made again after every config
//! change, while an unchanged config costs one short, uncontended lock per
//! request (the connection's own, not a global one).
//!
//! Renegotiation and TLS 1.3 post-handshake authentication: rustls supports
//! neither, so the certificate (or its absence) is fixed for the life of the
//! connection. A client that did not send one when asked must open a new
//! connection with one; the gateway never tries to ask again mid-connection.

use std::any::Any;
use std::sync::{Arc, Mutex};

/// Verdicts kept per connection; beyond this many plugin instances (many
/// snapshots on one long connection) the oldest is dropped.
const MEMO_CAPACITY: usize = 8;

type Verdict = Arc<dyn Any + Send + Sync>;

/// The chain a client presented (leaf first, DER), as the handshake
/// received it: possession of the leaf's key is proven, nothing else is.
pub struct ClientCertificate {
    chain: Box<[Vec<u8>]>,
    verdicts: Mutex<Vec<(u64, Verdict)>>,
}

impl ClientCertificate {
    /// A presented chain; `None` when it is empty.
    pub fn new(chain: Vec<Vec<u8>>) -> Option<ClientCertificate> {
        if chain.is_empty() {
            return None;
        }
        Some(ClientCertificate {
            chain: chain.into_boxed_slice(),
            verdicts: Mutex::new(Vec::new()),
        })
    }

    /// The leaf's DER.
    pub fn leaf(&self) -> &[u8] {
        &self.chain[0]
    }

    /// The certificates after the leaf (intermediates), as presented.
    pub fn intermediates(&self) -> &[Vec<u8>] {
        &self.chain[1..]
    }

    /// The verdict of the plugin instance `key` on this certificate: made
    /// by `decide` the first time, then reused for this connection.
    pub fn memo<T: Any + Send + Sync>(&self, key: u64, decide: impl FnOnce() -> T) -> Arc<T> {
        if let Ok(verdicts) = self.verdicts.lock() {
            if let Some(found) = verdicts.iter().find(|(k, _)| *k == key) {
                if let Ok(typed) = Arc::clone(&found.1).downcast::<T>() {
                    return typed;
                }
            }
        }
        // Decided outside the lock (a chain verification).
        let verdict = Arc::new(decide());
        if let Ok(mut verdicts) = self.verdicts.lock() {
            if verdicts.len() >= MEMO_CAPACITY {
                verdicts.remove(0);
            }
            verdicts.push((key, Arc::clone(&verdict) as Verdict));
        }
        verdict
    }
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_kept_per_instance_and_bounded() {
        let cert = ClientCertificate::new(vec![vec![1], vec![2]]).expect("chain");
        assert_eq!(cert.leaf(), &[1]);
        assert_eq!(cert.intermediates(), &[vec![2]]);
        let mut calls = 0;
        for _ in 0..3 {
            let verdict = cert.memo(7, || {
                calls += 1;
                true
            });
            assert!(*verdict);
        }
        assert_eq!(calls, 1, "decided once per instance");
        for key in 100..120 {
            cert.memo(key, || false);
        }
        assert!(cert.verdicts.lock().expect("lock").len() <= MEMO_CAPACITY);
        assert!(ClientCertificate::new(Vec::new()).is_none());
    }
}
