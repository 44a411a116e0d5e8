//! Secrets: in memory ([`Secret`], never shown by `Debug`) and on the wire ([`Sealed`],
//! readable only by the agent it was sealed to, named by its [`AgentKey`]).
//!
//! Nothing secret crosses the bus in clear: a replication password is sealed by the
//! master straight to the replica that will log in with it (the conductor relays it
//! without being able to read it), and the conductor seals seed tokens and failsafe keys
//! to the agents that use them. What is journaled or recorded of a command or a reply
//! therefore holds the sealed form only. The sealing itself lives with the keys, in the
//! transport crate.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret in memory. Its `Debug` never shows it, so it cannot leak into a log line
/// through `{:?}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A secret sealed to one agent's key (an anonymous sealed box, in hex): only the agent
/// holding that key's private half can open it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// From the sealed bytes.
    pub fn from_bytes(bytes: &[u8]) -> Sealed {
        Sealed(hex::encode(bytes))
    }

    /// The sealed bytes; `None` when what arrived is not hex at all.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        hex::decode(&self.0).ok()
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len() / 2)
    }
}

/// An agent's public key (Ed25519, 64 hex digits on the wire): what the conductor pins
/// at enrolment, and what a secret meant for that agent is sealed to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentKey([u8; 32]);

impl AgentKey {
    pub fn from_bytes(bytes: [u8; 32]) -> AgentKey {
        AgentKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From 64 hex digits; the error says what was wrong.
    pub fn from_hex(s: &str) -> Result<AgentKey, String> {
        hex::decode(s.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(AgentKey)
            .ok_or_else(|| {
                format!(
                    "{:?} is not an agent's public key (64 hex digits)",
                    s.chars().take(80).collect::<String>()
                )
            })
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl TryFrom<String> for AgentKey {
    type Error = String;
    fn try_from(s: String) -> Result<AgentKey, String> {
        AgentKey::from_hex(&s)
    }
}

impl From<AgentKey> for String {
    fn from(k: AgentKey) -> String {
        k.to_hex()
    }
}

impl fmt::Display for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentKey({})", &self.to_hex()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_and_keys_travel_as_hex() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
        let sealed = Sealed::from_bytes(&[1, 2, 3]);
        assert_eq!(format!("{sealed:?}"), "Sealed(3 bytes)");
        assert_eq!(sealed.to_bytes(), Some(vec![1, 2, 3]));
        let key = AgentKey::from_bytes([0xab; 32]);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<AgentKey>(&json).unwrap(), key);
        let err = serde_json::from_str::<AgentKey>("\"abc\"").unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }
}
