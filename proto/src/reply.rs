//! Replies: what an agent answers to a command.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    BackupId, BackupKind, EngineKind, InstanceId, MessageId, Position, ReplicationCredentials,
    StatusReport, Timestamp, VersionRange,
};

/// Why a command failed. Closed: a caller branches on it (retry, give up, re-fence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The command itself is wrong (unknown source, attach to self, bad argument).
    BadRequest,
    /// The command carries an epoch older than one the agent has seen.
    Fenced,
    /// The engine was reachable and said no (wrong credentials, SQL error).
    EngineRefused,
    /// The engine is down or unreachable.
    EngineUnavailable,
    /// The command's deadline passed before it could finish (or before it started).
    TimedOut,
    /// The agent does not know or cannot do this command.
    Unsupported,
    /// A bug or an unexpected local failure on the agent.
    Internal,
    /// The replica's history split from its source's (a transaction written on it, or
    /// its applier stopped on one out of order): never promoted, never a source.
    Diverged,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::BadRequest => "bad request",
            ErrorKind::Fenced => "fenced by a newer epoch",
            ErrorKind::EngineRefused => "engine refused",
            ErrorKind::EngineUnavailable => "engine unavailable",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal error",
            ErrorKind::Diverged => "diverged from its source",
        };
        f.write_str(s)
    }
}

/// A failed command: the kind, a message a person can act on, and whether sending the
/// same command again can help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CommandError {
    pub kind: ErrorKind,
    pub message: String,
    pub retryable: bool,
}

impl CommandError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        // The default for each kind; a caller that knows better sets `retryable` itself.
        let retryable = matches!(
            kind,
            ErrorKind::EngineUnavailable | ErrorKind::TimedOut | ErrorKind::Internal
        );
        CommandError {
            kind,
            message: message.into(),
            retryable,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
}

/// A successful command's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReplyBody {
    Pong {
        agent_version: String,
        protocol: VersionRange,
    },
    Status {
        report: Box<StatusReport>,
    },
    /// The command ran and has nothing to return.
    Done,
    Position {
        position: Position,
    },
    Credentials {
        credentials: ReplicationCredentials,
    },
    /// A long command was accepted; its result comes later as an event, and a re-send
    /// of the same command (same message id) returns it once it is there.
    Accepted {
        operation: MessageId,
    },
    Backup {
        backup: Box<BackupInfo>,
    },
    /// The engine's databases (its own schemas left out).
    Databases {
        names: Vec<String>,
    },
    /// A result this build does not know (sent by a newer agent).
    #[serde(other)]
    Unknown,
}

/// What a finished backup is: enough to find it, verify it and seed from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub backup_id: BackupId,
    pub kind: BackupKind,
    pub instance: InstanceId,
    pub engine: EngineKind,
    pub engine_version: String,
    /// The position the backup is consistent at (where a replica seeded from it starts).
    #[serde(default)]
    pub position: Option<Position>,
    pub size_bytes: u64,
    /// SHA-256 of the stored (compressed) bytes, hex.
    pub sha256: String,
    pub created_at: Timestamp,
    /// Where the agent stored it (store kind and object path).
    pub location: String,
    /// Engine-specific point an incremental child continues from (MariaDB: the
    /// InnoDB LSN the backup ends at).
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// The size of the server's data when a full backup was taken: the space a restore
    /// of it needs free before it starts.
    #[serde(default)]
    pub data_bytes: Option<u64>,
}

/// Something that happened on an agent, published on the events exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A long command finished; `result` is what a re-send of the command now returns.
    OperationFinished {
        operation: MessageId,
        command: String,
        result: Reply,
    },
    /// An event this build does not know (sent by a newer agent).
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(ReplyBody),
    Err(CommandError),
}

impl Reply {
    pub fn into_result(self) -> Result<ReplyBody, CommandError> {
        match self {
            Reply::Ok(b) => Ok(b),
            Reply::Err(e) => Err(e),
        }
    }
}

impl From<Result<ReplyBody, CommandError>> for Reply {
    fn from(r: Result<ReplyBody, CommandError>) -> Self {
        match r {
            Ok(b) => Reply::Ok(b),
            Err(e) => Reply::Err(e),
        }
    }
}
