//! The hashing and the cheap randomness the balancers share.
//!
//! Keys are hashed with FNV-1a and a splitmix64 finalizer: fixed across
//! processes and versions (every data plane of a fleet maps a key to the same
//! target, which `std`'s `DefaultHasher` does not promise), a few
//! instructions a byte, and well mixed enough for a ring.

use std::cell::Cell;

/// A stable 64-bit hash of a balancing key.
#[inline]
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

/// splitmix64's finalizer: spreads every input bit over the output.
#[inline]
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // Per thread: the address of a local and the time differ per thread and run.
    let local = 0u8;
    let address = std::ptr::addr_of!(local) as u64;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix(address ^ nanos) | 1
}

/// A random number from this thread's xorshift64* state: no lock, no
/// atomic, not cryptographic (choosing targets needs none of that).
#[inline]
pub fn random() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A random number below `n` (`n > 0`), by multiply-shift.
#[inline]
pub fn below(n: u64) -> u64 {
    ((u128::from(random()) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_spread() {
        // Fixed forever: data planes of different versions must agree.
        assert_eq!(hash_key(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_ne!(hash_key(b"user-1"), hash_key(b"user-2"));
        let mut counts = [0u32; 4];
        for i in 0..4_000 {
            counts[(hash_key(format!("k{i}").as_bytes()) >> 62) as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (800..1_200).contains(c)),
            "{counts:?}"
        );
        assert!((0..1_000).all(|_| below(3) < 3));
    }
}
