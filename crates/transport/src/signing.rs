//! Signed commands: the conductor signs the exact bytes of every command it publishes
//! (Ed25519, through `ring`), and an agent that trusts a list of conductor keys checks
//! the signature before it decodes anything. The signature travels in two message
//! headers, so the command's wire format is unchanged.
//!
//! A key is named by its id: the first 8 bytes of the SHA-256 of its public key, in hex.
//! Public keys are written as 64 hex digits (`tandem-conductor public-key` prints the
//! conductor's).

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

/// Message header holding the signing key's id.
pub const KEY_HEADER: &str = "x-tandem-key";
/// Message header holding the signature (hex).
pub const SIGNATURE_HEADER: &str = "x-tandem-signature";

/// A private key that signs commands.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    id: String,
    /// The same key's X25519 form, which opens what was sealed to it (see
    /// [`crate::sealing`]).
    opener: crate::sealing::Opener,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.id)
    }
}

/// Why a command's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the command is not signed")]
    Unsigned,
    #[error("the command is signed by key {0}, which this agent does not trust")]
    UnknownKey(String),
    #[error("the command's signature does not match its bytes (forged or tampered)")]
    BadSignature,
    #[error(
        "the command was seen before, byte for byte (replayed); a genuine re-send is \
             signed anew"
    )]
    Replayed,
}

/// Signatures of the commands accepted lately: a byte-for-byte copy (a replay) is
/// refused. The conductor signs every re-send anew (its issue time changes), so only a
/// copy is caught; entries go after `window` (the longest deadline an agent accepts,
/// after which a copy is refused as expired anyway).
pub struct Seen {
    window: std::time::Duration,
    entries: std::sync::Mutex<SeenEntries>,
}

/// The signatures in a set, and in the order they came, so that the expired ones are
/// dropped from the front: constant work per command, whatever the rate.
#[derive(Default)]
struct SeenEntries {
    set: std::collections::HashSet<String>,
    order: std::collections::VecDeque<(std::time::Instant, String)>,
}

impl Seen {
    pub fn new(window: std::time::Duration) -> Seen {
        Seen {
            window,
            entries: Default::default(),
        }
    }

    /// Records `signature`; false when it was already there (a replay).
    pub fn first_time(&self, signature: &str, now: std::time::Instant) -> bool {
        let mut e = self.entries.lock().expect("poisoned");
        while let Some((at, _)) = e.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            let (_, old) = e.order.pop_front().expect("a front entry");
            e.set.remove(&old);
        }
        if !e.set.insert(signature.to_owned()) {
            return false;
        }
        e.order.push_back((now, signature.to_owned()));
        true
    }
}

fn key_id(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    hex::encode(&digest.as_ref()[..8])
}

impl SigningKey {
    /// A new key, as PKCS#8 bytes to keep (0600) and load with [`SigningKey::from_pkcs8`].
    pub fn generate() -> Result<Vec<u8>, String> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| "could not generate an Ed25519 key".to_string())
    }

    pub fn from_pkcs8(bytes: &[u8]) -> Result<SigningKey, String> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
        let id = key_id(pair.public_key().as_ref());
        let opener = crate::sealing::Opener::from_pkcs8(bytes)?;
        Ok(SigningKey { pair, id, opener })
    }

    /// The public key as 64 hex digits (what agents are configured with).
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret `sealed` to this key.
    pub fn open(
        &self,
        sealed: &tandem_proto::Sealed,
    ) -> Result<tandem_proto::Secret, crate::sealing::SealError> {
        self.opener.open(sealed)
    }

    /// The signature of `bytes`, in hex.
    pub fn sign(&self, bytes: &[u8]) -> String {
        hex::encode(self.pair.sign(bytes).as_ref())
    }
}

/// The conductor keys an agent obeys (a list, so a key can be rotated: trust the new
/// one, switch the conductor, then drop the old one).
#[derive(Clone)]
pub struct TrustedKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "TrustedKeys({ids:?})")
    }
}

impl TrustedKeys {
    /// From public keys written as 64 hex digits; an error names the one that is wrong.
    pub fn from_hex(keys: &[String]) -> Result<TrustedKeys, String> {
        let keys = keys
            .iter()
            .map(|k| {
                let bytes = hex::decode(k.trim())
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| format!("{k:?} is not an Ed25519 public key (64 hex digits)"))?;
                Ok((key_id(&bytes), bytes))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(TrustedKeys { keys })
    }

    /// Checks that `bytes` were signed by a trusted key.
    pub fn verify(
        &self,
        bytes: &[u8],
        key: Option<&str>,
        signature: Option<&str>,
    ) -> Result<(), Refused> {
        let (Some(key), Some(signature)) = (key, signature) else {
            return Err(Refused::Unsigned);
        };
        let Some((_, public)) = self.keys.iter().find(|(id, _)| id == key) else {
            return Err(Refused::UnknownKey(key.chars().take(32).collect()));
        };
        let signature = hex::decode(signature).map_err(|_| Refused::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, public)
            .verify(bytes, &signature)
            .map_err(|_| Refused::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_trusted_keys_exact_bytes_pass() {
        let key = SigningKey::from_pkcs8(&SigningKey::generate().unwrap()).unwrap();
        let other = SigningKey::from_pkcs8(&SigningKey::generate().unwrap()).unwrap();
        let trusted = TrustedKeys::from_hex(&[key.public_hex()]).unwrap();
        let msg = b"a command";
        let sig = key.sign(msg);
        assert_eq!(trusted.verify(msg, Some(key.id()), Some(&sig)), Ok(()));
        assert_eq!(trusted.verify(msg, None, None), Err(Refused::Unsigned));
        assert_eq!(
            trusted.verify(b"a commanD", Some(key.id()), Some(&sig)),
            Err(Refused::BadSignature)
        );
        // Another key's signature, under its own id or claiming the trusted one's.
        let forged = other.sign(msg);
        assert!(matches!(
            trusted.verify(msg, Some(other.id()), Some(&forged)),
            Err(Refused::UnknownKey(_))
        ));
        assert_eq!(
            trusted.verify(msg, Some(key.id()), Some(&forged)),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            trusted.verify(msg, Some(key.id()), Some("zz")),
            Err(Refused::BadSignature)
        );
        assert!(TrustedKeys::from_hex(&["abc".into()]).is_err());
    }

    #[test]
    fn a_copy_within_the_window_is_a_replay() {
        let seen = Seen::new(std::time::Duration::from_secs(10));
        let now = std::time::Instant::now();
        assert!(seen.first_time("sig-a", now));
        assert!(!seen.first_time("sig-a", now + std::time::Duration::from_secs(5)));
        assert!(seen.first_time("sig-b", now));
        assert!(seen.first_time("sig-a", now + std::time::Duration::from_secs(11)));
    }
}
