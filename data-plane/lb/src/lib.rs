//! Load balancing across a service's targets: the [`Balancer`] trait, one
//! file per algorithm, and [`build`], which picks one by the name in the
//! config when a snapshot compiles.
//!
//! [`ALGORITHMS`] is the one list of what this data plane serves; the control
//! plane validates `load_balancing` against it, so an algorithm the fleet
//! cannot serve is refused at write time instead of NACKed by every data
//! plane. Adding an algorithm: a file here implementing [`Balancer`], one
//! arm in [`build`], its name in [`ALGORITHMS`].

pub mod round_robin;

pub use round_robin::RoundRobin;

/// What a balancer may look at to pick a target (grows with algorithms that
/// hash a request or weigh outstanding requests).
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext {
    /// A hash of the request's balancing key, for hashing balancers.
    pub hash: Option<u64>,
}

/// Picks one of a service's targets (by index) for each request.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// The target to use, or `None` when no target can take requests
    /// (every weight is 0): the proxy answers 503.
    fn pick(&self, context: &PickContext) -> Option<usize>;
}

/// The algorithms this data plane implements, by their config names.
pub const ALGORITHMS: [&str; 1] = ["round_robin"];

/// Builds the balancer named `algorithm` over targets with these weights.
pub fn build(algorithm: &str, weights: &[u32]) -> Result<Box<dyn Balancer>, String> {
    match algorithm {
        "round_robin" => Ok(Box::new(RoundRobin::new(weights))),
        other => Err(format!(
            "{other:?} is not supported yet (supported: {})",
            ALGORITHMS.join(", ")
        )),
    }
}

impl Balancer for RoundRobin {
    #[inline]
    fn pick(&self, _context: &PickContext) -> Option<usize> {
        RoundRobin::pick(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancers_are_built_by_name() {
        for name in ALGORITHMS {
            let balancer = build(name, &[1, 1]).expect("listed algorithms build");
            assert!(balancer.pick(&PickContext::default()).is_some());
        }
        let err = build("least_request", &[1]).expect_err("not implemented");
        assert_eq!(
            err,
            "\"least_request\" is not supported yet (supported: round_robin)"
        );
    }

    /// The control plane refuses what `is_served` says no data plane
    /// serves: this keeps the two lists one.
    #[test]
    fn the_control_planes_list_is_exactly_what_builds() {
        use tollgate_shared::model::LoadBalancing;
        for (name, value) in LoadBalancing::ALL {
            assert_eq!(build(name, &[1]).is_ok(), value.is_served(), "{name}");
            assert_eq!(ALGORITHMS.contains(&name), value.is_served(), "{name}");
        }
    }
}
