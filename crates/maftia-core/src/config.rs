//! Group configuration: `n`, `f` and the thresholds that follow from them.
use crate::NodeId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Which fault model a group runs under; it fixes the minimum `n` for a given `f`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resilience {
    /// No timing assumptions and no trusted component: needs `n > 3f`.
    Asynchronous,
    /// A trusted, synchronous, crash-only component per host (the TTCB): needs `n > 2f`.
    Wormhole,
}

/// Largest group maftia accepts; node ids are `u16` and every protocol sizes its per-peer
/// state by `n`, so the bound also bounds memory.
pub const MAX_GROUP_SIZE: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("group size n must be at least 1")]
    EmptyGroup,
    #[error("group size n = {n} exceeds the maximum of {max}")]
    GroupTooLarge { n: usize, max: usize },
    #[error(
        "the asynchronous configuration needs n > 3f, but n = {n} and f = {f}: \
         with f = {f} use at least n = {min_n}, or tolerate at most f = {max_f} with n = {n}"
    )]
    AsynchronousResilience {
        n: usize,
        f: usize,
        min_n: usize,
        max_f: usize,
    },
    #[error(
        "the wormhole configuration needs n > 2f, but n = {n} and f = {f}: \
         with f = {f} use at least n = {min_n}, or tolerate at most f = {max_f} with n = {n}"
    )]
    WormholeResilience {
        n: usize,
        f: usize,
        min_n: usize,
        max_f: usize,
    },
}

/// A validated group: `n` replicas of which at most `f` may be Byzantine.
///
/// Construct with [`GroupConfig::new`]; the fields are private so an invalid group cannot exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawGroupConfig", into = "RawGroupConfig")]
pub struct GroupConfig {
    n: usize,
    f: usize,
    resilience: Resilience,
}

#[derive(Serialize, Deserialize)]
struct RawGroupConfig {
    n: usize,
    f: usize,
    resilience: Resilience,
}

impl TryFrom<RawGroupConfig> for GroupConfig {
    type Error = ConfigError;
    fn try_from(raw: RawGroupConfig) -> Result<Self, ConfigError> {
        GroupConfig::new(raw.n, raw.f, raw.resilience)
    }
}

impl From<GroupConfig> for RawGroupConfig {
    fn from(c: GroupConfig) -> Self {
        RawGroupConfig {
            n: c.n,
            f: c.f,
            resilience: c.resilience,
        }
    }
}

impl GroupConfig {
    pub fn new(n: usize, f: usize, resilience: Resilience) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::EmptyGroup);
        }
        if n > MAX_GROUP_SIZE {
            return Err(ConfigError::GroupTooLarge {
                n,
                max: MAX_GROUP_SIZE,
            });
        }
        match resilience {
            Resilience::Asynchronous if n <= 3 * f => Err(ConfigError::AsynchronousResilience {
                n,
                f,
                min_n: 3 * f + 1,
                max_f: (n - 1) / 3,
            }),
            Resilience::Wormhole if n <= 2 * f => Err(ConfigError::WormholeResilience {
                n,
                f,
                min_n: 2 * f + 1,
                max_f: (n - 1) / 2,
            }),
            _ => Ok(GroupConfig { n, f, resilience }),
        }
    }

    /// An asynchronous group (`n > 3f`).
    pub fn asynchronous(n: usize, f: usize) -> Result<Self, ConfigError> {
        Self::new(n, f, Resilience::Asynchronous)
    }

    pub fn n(&self) -> usize {
        self.n
    }
    pub fn f(&self) -> usize {
        self.f
    }
    pub fn resilience(&self) -> Resilience {
        self.resilience
    }

    /// `true` if `id` names a member of this group.
    pub fn contains(&self, id: NodeId) -> bool {
        id.index() < self.n
    }

    /// All member ids in order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + Clone {
        NodeId::all(self.n)
    }

    /// `n − f`: a quorum that any two of intersect in at least `f + 1` nodes when `n > 3f`.
    pub fn quorum(&self) -> usize {
        self.n - self.f
    }

    /// `f + 1`: at least one honest node among any this many.
    pub fn one_honest(&self) -> usize {
        self.f + 1
    }

    /// `⌈(n + f + 1) / 2⌉`: any two sets of this size overlap in an honest node
    /// (the echo threshold of Bracha's and Reiter's broadcasts).
    pub fn echo_quorum(&self) -> usize {
        (self.n + self.f + 2) / 2
    }

    /// `2f + 1`: readies needed to deliver in Bracha's broadcast.
    pub fn ready_quorum(&self) -> usize {
        2 * self.f + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_n_at_most_3f_for_asynchronous() {
        let err = GroupConfig::asynchronous(3, 1).unwrap_err();
        assert_eq!(
            err,
            ConfigError::AsynchronousResilience {
                n: 3,
                f: 1,
                min_n: 4,
                max_f: 0
            }
        );
        assert!(err.to_string().contains("n > 3f"));
        assert!(GroupConfig::asynchronous(4, 1).is_ok());
        assert!(GroupConfig::asynchronous(6, 2).is_err());
        assert!(GroupConfig::asynchronous(7, 2).is_ok());
    }

    #[test]
    fn wormhole_needs_n_above_2f() {
        assert!(GroupConfig::new(2, 1, Resilience::Wormhole).is_err());
        assert!(GroupConfig::new(3, 1, Resilience::Wormhole).is_ok());
    }

    #[test]
    fn rejects_empty_and_oversized_groups() {
        assert_eq!(
            GroupConfig::asynchronous(0, 0),
            Err(ConfigError::EmptyGroup)
        );
        assert!(matches!(
            GroupConfig::asynchronous(MAX_GROUP_SIZE + 1, 1),
            Err(ConfigError::GroupTooLarge { .. })
        ));
    }

    #[test]
    fn thresholds() {
        for (n, f, echo) in [(4, 1, 3), (7, 2, 5), (10, 3, 7), (5, 1, 4)] {
            let c = GroupConfig::asynchronous(n, f).unwrap();
            assert_eq!(c.echo_quorum(), echo, "n={n} f={f}");
            // Two echo quorums intersect in more than f nodes.
            assert!(2 * c.echo_quorum() - n > f);
            assert_eq!(c.quorum(), n - f);
        }
    }

    #[test]
    fn deserialization_validates() {
        let raw = RawGroupConfig {
            n: 3,
            f: 1,
            resilience: Resilience::Asynchronous,
        };
        let bytes = postcard::to_stdvec(&raw).unwrap();
        assert!(postcard::from_bytes::<GroupConfig>(&bytes).is_err());
        let good = GroupConfig::asynchronous(4, 1).unwrap();
        let bytes = postcard::to_stdvec(&good).unwrap();
        assert_eq!(postcard::from_bytes::<GroupConfig>(&bytes).unwrap(), good);
    }
}
