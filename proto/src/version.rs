//! Protocol versioning.
//!
//! The rule: **a sender never sends a command the receiver's advertised versions do not
//! support.** Every agent advertises the range it speaks (in its [`StatusReport`] and
//! its pong); every command knows the version that introduced it
//! ([`Command::introduced_in`]). [`ensure_supported`] is the one check, called by the
//! conductor before anything is published.
//!
//! Within a version, fields may be added with `#[serde(default)]` (old receivers ignore
//! them, old senders omit them). Removing a field, changing its meaning, or adding a
//! command bumps [`ProtocolVersion::CURRENT`].
//!
//! [`StatusReport`]: crate::StatusReport
//! [`Command::introduced_in`]: crate::Command::introduced_in

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProtocolVersion(pub u16);

impl ProtocolVersion {
    pub const V1: ProtocolVersion = ProtocolVersion(1);
    /// `cancel_operation`.
    pub const V2: ProtocolVersion = ProtocolVersion(2);
    /// `pause_replication`, `resume_replication`, `list_databases`.
    pub const V3: ProtocolVersion = ProtocolVersion(3);
    /// `configure_pair`.
    pub const V4: ProtocolVersion = ProtocolVersion(4);
    /// `stop_writes`, `take_over_writes`.
    pub const V5: ProtocolVersion = ProtocolVersion(5);
    /// The version this build speaks natively.
    pub const CURRENT: ProtocolVersion = ProtocolVersion::V5;
    /// The oldest version this build still understands.
    pub const OLDEST_SUPPORTED: ProtocolVersion = ProtocolVersion::V1;
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// An inclusive range of protocol versions one side speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: ProtocolVersion,
    pub max: ProtocolVersion,
}

impl VersionRange {
    /// What this build speaks.
    pub const OURS: VersionRange = VersionRange {
        min: ProtocolVersion::OLDEST_SUPPORTED,
        max: ProtocolVersion::CURRENT,
    };

    pub fn contains(&self, v: ProtocolVersion) -> bool {
        self.min <= v && v <= self.max
    }

    /// The highest version both ranges speak, if any.
    pub fn negotiate(&self, other: &VersionRange) -> Option<ProtocolVersion> {
        let high = self.max.min(other.max);
        let low = self.min.max(other.min);
        (low <= high).then_some(high)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error(
        "the agent speaks protocol {peer} and we speak {ours}: no common version; \
         upgrade the older side"
    )]
    NoCommonVersion {
        peer: VersionRange,
        ours: VersionRange,
    },
    #[error(
        "command {command} needs protocol {needs} but the agent speaks at most {peer_max}; \
         upgrade the agent first"
    )]
    CommandTooNew {
        command: &'static str,
        needs: ProtocolVersion,
        peer_max: ProtocolVersion,
    },
}

/// Checks the version rule for one command, returning the version to send it with.
pub fn ensure_supported(
    command: &Command,
    peer: &VersionRange,
) -> Result<ProtocolVersion, VersionError> {
    let version = VersionRange::OURS
        .negotiate(peer)
        .ok_or(VersionError::NoCommonVersion {
            peer: *peer,
            ours: VersionRange::OURS,
        })?;
    let needs = command.introduced_in();
    if needs > version {
        return Err(VersionError::CommandTooNew {
            command: command.name(),
            needs,
            peer_max: peer.max,
        });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: u16, max: u16) -> VersionRange {
        VersionRange {
            min: ProtocolVersion(min),
            max: ProtocolVersion(max),
        }
    }

    #[test]
    fn negotiation() {
        assert_eq!(
            range(1, 3).negotiate(&range(2, 5)),
            Some(ProtocolVersion(3))
        );
        assert_eq!(range(1, 1).negotiate(&range(2, 5)), None);
        assert_eq!(
            range(1, 1).negotiate(&range(1, 1)),
            Some(ProtocolVersion(1))
        );
    }

    #[test]
    fn a_peer_without_a_common_version_is_refused() {
        let err = ensure_supported(&Command::Ping, &range(7, 9)).unwrap_err();
        assert!(matches!(err, VersionError::NoCommonVersion { .. }));
        assert!(err.to_string().contains("upgrade"));
        assert_eq!(
            ensure_supported(&Command::Ping, &VersionRange::OURS),
            Ok(ProtocolVersion::CURRENT)
        );
    }
}
