//! Identifiers and the fencing epoch. Each is its own type so that an instance id can
//! never be passed where a replica-set id is meant, and an epoch is never a bare integer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an id must not be empty")]
    Empty,
    #[error("id {id:?} is {len} characters long; at most {max} are allowed")]
    TooLong { id: String, len: usize, max: usize },
    #[error(
        "id {id:?} contains {bad:?}; use lower-case letters, digits, '-' and '_' \
         (it becomes an AMQP routing key and part of queue names)"
    )]
    BadCharacter { id: String, bad: char },
    #[error(
        "backup id {id:?} contains {bad:?}; use letters, digits, '_', '-' and '.' (not first)"
    )]
    BadBackupCharacter { id: String, bad: char },
    #[error("{0:?} is not a UUID")]
    NotUuid(String),
}

const MAX_ID_LEN: usize = 64;

fn validate_name(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            id: s.to_owned(),
            len: s.len(),
            max: MAX_ID_LEN,
        });
    }
    // Dots are excluded on purpose: routing keys on the status exchange are
    // `<zone>.<instance>`, and a dot inside an id would make topic bindings ambiguous.
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(IdError::BadCharacter {
            id: s.to_owned(),
            bad,
        });
    }
    Ok(())
}

/// A backup id names files in the backup store: `[A-Za-z0-9_.-]{1,128}`, not starting
/// with a dot (never `..`, never hidden).
fn validate_backup_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_BACKUP_ID_LEN {
        return Err(IdError::TooLong {
            id: s.to_owned(),
            len: s.len(),
            max: MAX_BACKUP_ID_LEN,
        });
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .or_else(|| s.starts_with('.').then_some('.'))
    {
        return Err(IdError::BadBackupCharacter {
            id: s.to_owned(),
            bad,
        });
    }
    Ok(())
}

const MAX_BACKUP_ID_LEN: usize = 128;

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        name_id!($(#[$doc])* $name, validate_name);
    };
    ($(#[$doc:meta])* $name:ident, $validate:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                $validate(&s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_id!(
    /// The id of one database instance (one VM, one agent, one engine).
    /// It names the agent's command queue, so it is restricted to `[a-z0-9_-]{1,64}`.
    InstanceId
);
name_id!(
    /// The id of a replica set: one master and its replicas.
    ReplicaSetId
);
name_id!(
    /// A zone: a failure domain a cloud administrator offers (an availability zone).
    /// Status routing keys are `<zone>.<instance>`, hence the same rules as an id.
    ZoneId
);
name_id!(
    /// The physical host a database VM runs on (its hypervisor; Nova's `hostId`): the
    /// failure domain under the zone that placement rules by host are about.
    HostId
);
name_id!(
    /// The id of one backup in the backup store (its files are named after it).
    BackupId,
    validate_backup_id
);

/// The id of one message. Commands are idempotent by this id: an agent that sees the
/// same id twice answers with the result it recorded the first time.
///
/// On the wire it is the UUID's text form, not 16 raw bytes, so that any MessagePack or
/// JSON reader (a person's, another language's) sees the same id in logs and audit rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct MessageId(Uuid);

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.0.to_string()
    }
}

impl TryFrom<String> for MessageId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl MessageId {
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
    pub fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl FromStr for MessageId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdError::NotUuid(s.to_owned()))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The fencing generation of a replica set. It is bumped in the same store transaction
/// as every topology change and carried by every command; an agent refuses a command
/// whose epoch is older than the highest it has seen, so a master that comes back after
/// a failover cannot act on orders from before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(u64);

impl Epoch {
    /// The epoch of an instance that belongs to no replica set yet.
    pub const ZERO: Epoch = Epoch(0);

    pub const fn new(n: u64) -> Self {
        Self(n)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
    /// The epoch after this one. Saturates instead of wrapping: a wrapped epoch would
    /// un-fence every stale master at once.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// The fencing number of the conductor that sent a command: the store's term, taken
/// each time a conductor becomes the one acting on it (a restart, or a standby taking
/// over a shared store). An agent refuses a command whose term is older than the
/// highest it has seen, so a conductor deposed while frozen cannot act when it thaws,
/// even with a command it had recorded before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Term(u64);

impl Term {
    pub const fn new(n: u64) -> Self {
        Self(n)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_validated() {
        let cases: &[(&str, Result<(), &str>)] = &[
            ("db-1", Ok(())),
            ("a_b_9", Ok(())),
            ("", Err("must not be empty")),
            ("Db1", Err("contains 'D'")),
            ("zone.db", Err("contains '.'")),
            ("db 1", Err("contains ' '")),
        ];
        for (input, expect) in cases {
            let got = InstanceId::new(*input)
                .map(|_| ())
                .map_err(|e| e.to_string());
            match (got, expect) {
                (Ok(()), Ok(())) => {}
                (Err(msg), Err(part)) => assert!(msg.contains(part), "{input:?}: {msg}"),
                (got, expect) => panic!("{input:?}: got {got:?}, expected {expect:?}"),
            }
        }
        let long = "x".repeat(65);
        assert!(matches!(
            InstanceId::new(long),
            Err(IdError::TooLong { len: 65, .. })
        ));
    }

    #[test]
    fn epoch_orders_and_saturates() {
        assert!(Epoch::new(2) > Epoch::new(1));
        assert_eq!(Epoch::ZERO.next(), Epoch::new(1));
        assert_eq!(Epoch::new(u64::MAX).next(), Epoch::new(u64::MAX));
    }
}
