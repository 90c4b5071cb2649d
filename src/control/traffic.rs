//! Sticky traffic assignment, shared by the proxy and the property tests of `plan`.
//!
//! A user's key (a header or cookie value) hashes into one of [`BUCKETS`] buckets per
//! rollout; buckets below `weight × BUCKETS / 100` go to the canary. Raising the weight only
//! adds buckets, so a user once sent to the canary is never moved back to stable while the
//! weight grows.

use crate::spec::units::Weight;

/// Buckets per rollout: fine enough for 0.01% steps.
pub const BUCKETS: u32 = 10_000;

/// Which release serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    Stable,
    Canary,
}

/// The bucket of a key within one rollout (FNV-1a over the rollout id and the key: stable
/// across processes and versions, unlike `std`'s hasher).
pub fn bucket(rollout: &str, key: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rollout.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(BUCKETS)) as u32
}

/// The arm of a bucket at a canary weight.
pub fn arm(bucket: u32, canary_weight: Weight) -> Arm {
    if bucket < u32::from(canary_weight.0) * (BUCKETS / 100) {
        Arm::Canary
    } else {
        Arm::Stable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Raising the weight never moves a sticky user back to stable.
        #[test]
        fn raising_the_weight_never_moves_a_user_back(key in ".{0,40}", w1 in 0u8..=100, w2 in 0u8..=100) {
            let (lo, hi) = (w1.min(w2), w1.max(w2));
            let b = bucket("checkout/prod/r1", &key);
            if arm(b, Weight(lo)) == Arm::Canary {
                prop_assert_eq!(arm(b, Weight(hi)), Arm::Canary);
            }
        }
    }

    #[test]
    fn buckets_split_users_in_proportion_to_the_weight() {
        let canary = (0..100_000)
            .filter(|i| arm(bucket("r", &format!("user-{i}")), Weight(25)) == Arm::Canary)
            .count();
        // binomial sd ≈ 137; 5 sd
        assert!((canary as i64 - 25_000).abs() < 700, "{canary}");
        assert_eq!(arm(0, Weight(0)), Arm::Stable);
        assert_eq!(arm(BUCKETS - 1, Weight(100)), Arm::Canary);
    }
}
