//! Encoding: MessagePack with named fields on the wire, JSON for people.
//!
//! Named fields (maps, not arrays) are what make the protocol evolvable: a receiver
//! ignores fields it does not know, and a field it expects but does not get falls back
//! to its `#[serde(default)]`.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The AMQP `content_type` of every Tandem message on the wire.
pub const CONTENT_TYPE: &str = "application/msgpack";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    MessagePack,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("cannot decode {format:?} message ({len} bytes): {reason}")]
    Decode {
        format: Format,
        len: usize,
        reason: String,
    },
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(value).map_err(|e| CodecError::Encode(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|e| CodecError::Decode {
        format: Format::MessagePack,
        len: bytes.len(),
        reason: e.to_string(),
    })
}

pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, CodecError> {
    serde_json::to_string_pretty(value).map_err(|e| CodecError::Encode(e.to_string()))
}

pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, CodecError> {
    serde_json::from_str(text).map_err(|e| CodecError::Decode {
        format: Format::Json,
        len: text.len(),
        reason: e.to_string(),
    })
}
