//! Every error answer: one line a person can act on, and a kind a program can branch on.

use serde::{Deserialize, Serialize};

/// Whose fault an error is, and what kind; the HTTP status follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or names something that cannot be (400).
    BadRequest,
    /// No bearer token, or one this conductor does not know (401).
    Unauthorized,
    /// A reader's token asked for a change (403).
    Forbidden,
    /// Nothing by that name: a set, a workflow, a backup, a metadata key (404).
    NotFound,
    /// No agent of that instance has reported here (404).
    UnknownInstance,
    /// The instance has no pinned key, so nothing can be sent to it (404).
    NotEnrolled,
    /// The request contradicts the current state (409).
    Conflict,
    /// Another workflow is active on the set (409).
    Busy,
    /// A change not sent as JSON (415).
    UnsupportedMediaType,
    /// The agent answered with an error (400 when it was the request's, else 502).
    AgentError,
    /// The agent's answer made no sense for the command (502).
    BadReply,
    /// The broker is not reachable from the conductor (503).
    BrokerUnavailable,
    /// No answer in time (504).
    TimedOut,
    /// A fault of the conductor itself (500).
    Internal,
}

crate::words!(ErrorKind {
    BadRequest => "bad_request",
    Unauthorized => "unauthorized",
    Forbidden => "forbidden",
    NotFound => "not_found",
    UnknownInstance => "unknown_instance",
    NotEnrolled => "not_enrolled",
    Conflict => "conflict",
    Busy => "busy",
    UnsupportedMediaType => "unsupported_media_type",
    AgentError => "agent_error",
    BadReply => "bad_reply",
    BrokerUnavailable => "broker_unavailable",
    TimedOut => "timed_out",
    Internal => "internal",
});

impl ErrorKind {
    /// The HTTP status this kind is answered with (`AgentError` by default: see
    /// [`ErrorKind::AgentError`]).
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound | ErrorKind::UnknownInstance | ErrorKind::NotEnrolled => 404,
            ErrorKind::Conflict | ErrorKind::Busy => 409,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Internal => 500,
            ErrorKind::AgentError | ErrorKind::BadReply => 502,
            ErrorKind::BrokerUnavailable => 503,
            ErrorKind::TimedOut => 504,
        }
    }
}

/// Every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// One line a person can act on.
    pub error: String,
    pub kind: ErrorKind,
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}
