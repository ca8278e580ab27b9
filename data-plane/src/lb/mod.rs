//! Load balancing across a service's targets, a file per algorithm.
//!
//! Only weighted round robin is implemented. A snapshot asking for another
//! algorithm is refused at compile time (NACK) rather than silently balanced
//! round robin: an operator who asked for consistent hashing must not get
//! something else without knowing.

pub mod round_robin;

pub use round_robin::RoundRobin;
