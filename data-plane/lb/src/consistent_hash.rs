//! Consistent hashing on a ring (Karger et al.; ketama's layout).
//!
//! Each target owns `100 x weight` points on a 64-bit ring, at the hashes of
//! `address#replica`; a key goes to the owner of the first point at or after
//! its hash. A target's points depend only on its own address and weight, so
//! adding a target moves only the keys that land on its new points (about
//! 1/N of them) and removing one moves only its own keys. A ring rather than
//! Maglev: Maglev's table gives a more even spread for the same memory but
//! remaps somewhat more than the minimum on a change; a ring remaps exactly
//! the minimum, and with 100 points per unit of weight its spread is within
//! a few percent, and a lookup is one binary search.
//!
//! A key whose target cannot take the request (ejected, or already tried by
//! this request) walks on to the next point's owner, so it fails over to
//! the same neighbour on every data plane and comes back when its target
//! does.

use crate::hash::hash_key;
use crate::PickContext;

/// Points per unit of weight.
pub const POINTS_PER_WEIGHT: u64 = 100;
/// At most this many points in a ring; heavier pools are scaled down.
pub const MAX_POINTS: u64 = 200_000;

#[derive(Debug)]
pub struct ConsistentHash {
    /// `(point, target)`, sorted by point.
    ring: Box<[(u64, u32)]>,
}

impl ConsistentHash {
    /// `addresses[i]` names target `i` (its points are hashed from it).
    pub fn new(addresses: &[&str], weights: &[u32]) -> ConsistentHash {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        // Scale only pathological pools (the scaling depends on the total,
        // so it would move keys on a change; ordinary weights never hit it).
        let divisor = (total * POINTS_PER_WEIGHT).div_ceil(MAX_POINTS).max(1);
        let mut ring = Vec::new();
        for (index, (address, weight)) in addresses.iter().zip(weights).enumerate() {
            if *weight == 0 {
                continue;
            }
            let points = (u64::from(*weight) * POINTS_PER_WEIGHT / divisor).max(1);
            let target = u32::try_from(index).unwrap_or(u32::MAX);
            let mut name = Vec::with_capacity(address.len() + 8);
            for replica in 0..points {
                name.clear();
                name.extend_from_slice(address.as_bytes());
                name.push(b'#');
                name.extend_from_slice(replica.to_string().as_bytes());
                ring.push((hash_key(&name), target));
            }
        }
        ring.sort_unstable();
        ConsistentHash {
            ring: ring.into_boxed_slice(),
        }
    }

    pub fn pick(&self, context: &PickContext<'_>) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let hash = context.hash.unwrap_or(0);
        let start = self.ring.partition_point(|(point, _)| *point < hash);
        let n = self.ring.len();
        (0..n)
            .map(|k| self.ring[(start + k) % n].1 as usize)
            .find(|target| context.usable(*target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(ring: &ConsistentHash, key: &str) -> usize {
        let context = PickContext::new(Some(hash_key(key.as_bytes())), &|_| true);
        ring.pick(&context).expect("a target")
    }

    #[test]
    fn adding_a_target_moves_about_one_nth_of_the_keys() {
        let three = ConsistentHash::new(&["a:1", "b:1", "c:1"], &[1, 1, 1]);
        let four = ConsistentHash::new(&["a:1", "b:1", "c:1", "d:1"], &[1, 1, 1, 1]);
        let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let mut moved = 0;
        for key in &keys {
            let before = owner(&three, key);
            let after = owner(&four, key);
            if before != after {
                // Only ever to the new target.
                assert_eq!(after, 3, "{key}");
                moved += 1;
            }
        }
        // Ideal: 2,500 of 10,000.
        assert!((1_800..3_200).contains(&moved), "{moved}");
    }

    #[test]
    fn weights_are_respected() {
        let ring = ConsistentHash::new(&["a:1", "b:1"], &[1, 3]);
        let mut counts = [0; 2];
        for i in 0..10_000 {
            counts[owner(&ring, &format!("k{i}"))] += 1;
        }
        assert!((6_500..8_500).contains(&counts[1]), "{counts:?}");
        assert!(ConsistentHash::new(&["a:1"], &[0])
            .pick(&PickContext::any())
            .is_none());
    }

    #[test]
    fn an_unusable_owner_fails_over_to_a_fixed_neighbour() {
        let ring = ConsistentHash::new(&["a:1", "b:1", "c:1"], &[1, 1, 1]);
        let hash = Some(hash_key(b"key"));
        let first = ring.pick(&PickContext::new(hash, &|_| true)).expect("t");
        let without = |i: usize| i != first;
        let second = ring.pick(&PickContext::new(hash, &without)).expect("t");
        assert_ne!(first, second);
        assert_eq!(ring.pick(&PickContext::new(hash, &without)), Some(second));
    }
}
