//! Who may do what through the API: the two roles, the caller a request was made by,
//! and a token as the store keeps it. The tokens themselves are `crate::tokens`.

/// What a token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Status, topology, sets, workflows, backups, metadata, events, audit: every read.
    Reader,
    /// Every read and every change.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "reader" => Ok(Role::Reader),
            "operator" => Ok(Role::Operator),
            other => Err(format!(
                "role {other:?} is neither \"reader\" nor \"operator\""
            )),
        }
    }

    /// Whether this role may make a request that changes something.
    pub fn may_change(self) -> bool {
        self == Role::Operator
    }
}

/// Who made a request: a token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// A token as the store keeps it (never the token itself).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub created_at: tandem_proto::Timestamp,
}
