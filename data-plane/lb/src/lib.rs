//! Load balancing across a service's targets: the [`Balancer`] trait, one
//! file per algorithm, and [`build`], which picks one by the name in the
//! config when a snapshot compiles.
//!
//! [`ALGORITHMS`] is the one list of what this data plane serves; the control
//! plane validates `load_balancing` against it, so an algorithm the fleet
//! cannot serve is refused at write time instead of NACKed by every data
//! plane. Adding an algorithm: a file here implementing [`Balancer`], one
//! arm in [`build`], its name in [`ALGORITHMS`].

pub mod consistent_hash;
pub mod hash;
pub mod least_request;
pub mod round_robin;

pub use consistent_hash::ConsistentHash;
pub use hash::hash_key;
pub use least_request::LeastRequest;
pub use round_robin::RoundRobin;

/// What a balancer may look at to pick a target.
#[derive(Clone, Copy)]
pub struct PickContext<'a> {
    /// A hash of the request's balancing key, for hashing balancers.
    pub hash: Option<u64>,
    /// Whether a target can take this request: not ejected by health checks
    /// and not already tried by this request.
    usable: &'a dyn Fn(usize) -> bool,
}

fn every_target(_: usize) -> bool {
    true
}

impl<'a> PickContext<'a> {
    pub fn new(hash: Option<u64>, usable: &'a dyn Fn(usize) -> bool) -> PickContext<'a> {
        PickContext { hash, usable }
    }

    /// Every target usable, no key.
    pub fn any() -> PickContext<'static> {
        PickContext {
            hash: None,
            usable: &every_target,
        }
    }

    #[inline]
    pub fn usable(&self, target: usize) -> bool {
        (self.usable)(target)
    }
}

impl std::fmt::Debug for PickContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PickContext")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Picks one of a service's targets (by index) for each request.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// The target to use, or `None` when no usable target has weight: the
    /// proxy answers 503.
    fn pick(&self, context: &PickContext<'_>) -> Option<usize>;

    /// A request was sent to `target` (balancers that weigh outstanding
    /// requests count it).
    #[inline]
    fn started(&self, _target: usize) {}

    /// A request to `target` got its response head or failed.
    #[inline]
    fn finished(&self, _target: usize) {}
}

/// The algorithms this data plane implements, by their config names.
pub const ALGORITHMS: [&str; 3] = ["round_robin", "least_request", "consistent_hash"];

/// Builds the balancer named `algorithm` over targets with these addresses
/// and weights (index = target).
pub fn build(
    algorithm: &str,
    addresses: &[&str],
    weights: &[u32],
) -> Result<Box<dyn Balancer>, String> {
    match algorithm {
        "round_robin" => Ok(Box::new(RoundRobin::new(weights))),
        "least_request" => Ok(Box::new(LeastRequest::new(weights))),
        "consistent_hash" => Ok(Box::new(ConsistentHash::new(addresses, weights))),
        other => Err(format!(
            "{other:?} is not supported yet (supported: {})",
            ALGORITHMS.join(", ")
        )),
    }
}

/// How many schedule slots round robin tries before scanning for any
/// usable target.
const ROUND_ROBIN_TRIES: usize = 8;

impl Balancer for RoundRobin {
    #[inline]
    fn pick(&self, context: &PickContext<'_>) -> Option<usize> {
        for _ in 0..ROUND_ROBIN_TRIES {
            let index = RoundRobin::pick(self)?;
            if context.usable(index) {
                return Some(index);
            }
        }
        // Most slots belong to unusable targets: any usable one with weight.
        let n = self.len();
        let start = hash::below(n as u64) as usize;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| self.weight(*i) > 0 && context.usable(*i))
    }
}

impl Balancer for LeastRequest {
    #[inline]
    fn pick(&self, context: &PickContext<'_>) -> Option<usize> {
        LeastRequest::pick(self, context)
    }
    #[inline]
    fn started(&self, target: usize) {
        LeastRequest::started(self, target);
    }
    #[inline]
    fn finished(&self, target: usize) {
        LeastRequest::finished(self, target);
    }
}

impl Balancer for ConsistentHash {
    #[inline]
    fn pick(&self, context: &PickContext<'_>) -> Option<usize> {
        ConsistentHash::pick(self, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancers_are_built_by_name() {
        for name in ALGORITHMS {
            let balancer = build(name, &["a:1", "b:1"], &[1, 1]).expect("listed algorithms build");
            assert!(balancer.pick(&PickContext::any()).is_some());
            let only_b = |i: usize| i == 1;
            for _ in 0..20 {
                assert_eq!(balancer.pick(&PickContext::new(None, &only_b)), Some(1));
            }
        }
        let err = build("maglev", &["a:1"], &[1]).expect_err("not implemented");
        assert_eq!(
            err,
            "\"maglev\" is not supported yet (supported: round_robin, least_request, consistent_hash)"
        );
    }

    /// The control plane refuses what `is_served` says no data plane
    /// serves: this keeps the two lists one.
    #[test]
    fn the_control_planes_list_is_exactly_what_builds() {
        use tollgate_shared::model::LoadBalancing;
        for (name, value) in LoadBalancing::ALL {
            assert_eq!(
                build(name, &["a:1"], &[1]).is_ok(),
                value.is_served(),
                "{name}"
            );
            assert_eq!(ALGORITHMS.contains(&name), value.is_served(), "{name}");
        }
    }
}
