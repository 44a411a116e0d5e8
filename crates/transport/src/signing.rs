//! Authenticated commands: the conductor authenticates the exact bytes of every command
//! it publishes for the agent it is sent to (see [`crate::mac`]: a tag under the key
//! the conductor's and the agent's Ed25519 keys agree on), and an agent that trusts a
//! list of conductor keys checks the tag before it decodes anything. Key id and tag
//! travel in message headers, so the command's wire format is unchanged.
//!
//! A key is named by its id: the first 8 bytes of the SHA-256 of its public key, in hex.
//! Public keys are written as 64 hex digits (`tandem-conductor public-key` prints the
//! conductor's).

use std::fmt;

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::identity::PublicKey;

/// Message header holding the sender's key id.
pub const KEY_HEADER: &str = "x-tandem-key";
/// Message header holding the tags, one per recipient: `<recipient key id>:<hex>,…`.
pub const MAC_HEADER: &str = "x-tandem-mac";

/// A side's private key (the conductor's, an agent's): it authenticates what the side
/// sends, checks what it receives, and opens what was sealed to it.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    id: String,
    /// The same key's X25519 form, which opens what was sealed to it (see
    /// [`crate::sealing`]).
    opener: crate::sealing::Opener,
    /// The keys agreed with each peer (see [`crate::mac`]).
    pairs: crate::mac::PairKeys,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.id)
    }
}

/// Why a command's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the command is not authenticated for this agent")]
    Unsigned,
    #[error("the command is from key {0}, which this agent does not trust")]
    UnknownKey(String),
    #[error("the command's tag does not match its bytes (forged or tampered)")]
    BadSignature,
    #[error(
        "the command was seen before, byte for byte (replayed); a genuine re-send is \
             authenticated anew"
    )]
    Replayed,
}

/// Tags of the commands accepted lately: a byte-for-byte copy (a replay) is refused.
/// The conductor authenticates every re-send anew (its issue time changes), so only a
/// copy is caught; entries go after `window` (the longest deadline an agent accepts,
/// after which a copy is refused as expired anyway).
pub struct Seen {
    window: std::time::Duration,
    entries: std::sync::Mutex<SeenEntries>,
}

/// The tags in a set, and in the order they came, so that the expired ones are dropped
/// from the front: constant work per command, whatever the rate. A tag is kept as its
/// first 128 bits (no allocation per command; a collision needs a forged tag anyway).
#[derive(Default)]
struct SeenEntries {
    set: std::collections::HashSet<u128>,
    order: std::collections::VecDeque<(std::time::Instant, u128)>,
}

impl Seen {
    pub fn new(window: std::time::Duration) -> Seen {
        Seen {
            window,
            entries: Default::default(),
        }
    }

    /// Records `tag` (hex); false when it was already there (a replay), or is no tag.
    pub fn first_time(&self, tag: &str, now: std::time::Instant) -> bool {
        let Some(tag) = tag.get(..32).and_then(|t| u128::from_str_radix(t, 16).ok()) else {
            return false;
        };
        let mut e = self.entries.lock().expect("poisoned");
        while let Some((at, _)) = e.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            let (_, old) = e.order.pop_front().expect("a front entry");
            e.set.remove(&old);
        }
        if !e.set.insert(tag) {
            return false;
        }
        e.order.push_back((now, tag));
        true
    }
}

pub(crate) fn key_id(public: &[u8]) -> String {
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

    /// A fresh key held in memory only (tests, tools); a side's own key is kept in a
    /// file ([`SigningKey::load_or_generate`]).
    pub fn random() -> SigningKey {
        SigningKey::from_pkcs8(&SigningKey::generate().expect("the system's random source"))
            .expect("a fresh key parses")
    }

    pub fn from_pkcs8(bytes: &[u8]) -> Result<SigningKey, String> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
        let id = key_id(pair.public_key().as_ref());
        // The X25519 scalar libsodium derives from an Ed25519 key: it opens sealed
        // secrets and agrees pair keys.
        let scalar = ed25519_dalek::SigningKey::from_pkcs8_der(bytes)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?
            .to_scalar_bytes();
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("an Ed25519 public key is 32 bytes");
        Ok(SigningKey {
            pair,
            id,
            opener: crate::sealing::Opener::from_scalar(scalar),
            pairs: crate::mac::PairKeys::new(scalar, public),
        })
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

    /// The tag of `bytes` for `peer` (hex); `None` when `peer` is no usable key.
    pub fn tag_for(&self, peer: &PublicKey, bytes: &[u8]) -> Option<String> {
        self.pairs.tag(peer, bytes).map(|(_, tag)| tag)
    }

    /// As [`SigningKey::tag_for`], with `peer`'s key id.
    pub(crate) fn tag_and_id(&self, peer: &PublicKey, bytes: &[u8]) -> Option<(String, String)> {
        self.pairs.tag(peer, bytes)
    }

    /// Whether `tag` is `peer`'s tag of `bytes` for this key.
    pub fn tag_checks(&self, peer: &PublicKey, bytes: &[u8], tag: &str) -> bool {
        self.pairs.checks(peer, bytes, tag)
    }
}

/// The conductor keys an agent obeys (a list, so a key can be rotated: trust the new
/// one, switch the conductor, then drop the old one).
#[derive(Clone)]
pub struct TrustedKeys {
    keys: Vec<(String, PublicKey)>,
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
                let key = PublicKey::from_hex(k)?;
                Ok((key_id(key.as_bytes()), key))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(TrustedKeys { keys })
    }

    /// The trusted keys: what an agent's reports and events are authenticated for.
    pub fn keys(&self) -> Vec<PublicKey> {
        self.keys.iter().map(|(_, k)| *k).collect()
    }

    /// Checks that `bytes` come from a trusted key, authenticated for `me`; answers that
    /// key and the tag (what a replay repeats).
    pub fn verify(
        &self,
        me: &SigningKey,
        bytes: &[u8],
        key: Option<&str>,
        tags: Option<&str>,
    ) -> Result<(PublicKey, String), Refused> {
        let (Some(key), Some(tag)) = (key, tags.and_then(|t| crate::mac::tag_for(t, me.id())))
        else {
            return Err(Refused::Unsigned);
        };
        let Some((_, public)) = self.keys.iter().find(|(id, _)| id == key) else {
            return Err(Refused::UnknownKey(key.chars().take(32).collect()));
        };
        if !me.tag_checks(public, bytes, tag) {
            return Err(Refused::BadSignature);
        }
        Ok((*public, tag.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_trusted_keys_exact_bytes_pass() {
        let (key, other, agent) = (
            SigningKey::random(),
            SigningKey::random(),
            SigningKey::random(),
        );
        let trusted = TrustedKeys::from_hex(&[key.public_hex()]).unwrap();
        let msg = b"a command";
        let tags = |from: &SigningKey, bytes: &[u8]| {
            crate::mac::header_value(&[(
                agent.id().to_owned(),
                from.tag_for(&agent.public_key(), bytes).unwrap(),
            )])
        };
        let good = tags(&key, msg);
        assert!(trusted
            .verify(&agent, msg, Some(key.id()), Some(&good))
            .is_ok());
        assert_eq!(
            trusted.verify(&agent, msg, None, None),
            Err(Refused::Unsigned)
        );
        // Authenticated for another agent: not for this one.
        assert_eq!(
            trusted.verify(&other, msg, Some(key.id()), Some(&good)),
            Err(Refused::Unsigned)
        );
        assert_eq!(
            trusted.verify(&agent, b"a commanD", Some(key.id()), Some(&good)),
            Err(Refused::BadSignature)
        );
        // Another key's tag, under its own id or claiming the trusted one's.
        let forged = tags(&other, msg);
        assert!(matches!(
            trusted.verify(&agent, msg, Some(other.id()), Some(&forged)),
            Err(Refused::UnknownKey(_))
        ));
        assert_eq!(
            trusted.verify(&agent, msg, Some(key.id()), Some(&forged)),
            Err(Refused::BadSignature)
        );
        let garbled = format!("{}:zz", agent.id());
        assert_eq!(
            trusted.verify(&agent, msg, Some(key.id()), Some(&garbled)),
            Err(Refused::BadSignature)
        );
        assert!(TrustedKeys::from_hex(&["abc".into()]).is_err());
    }

    #[test]
    fn a_copy_within_the_window_is_a_replay() {
        let seen = Seen::new(std::time::Duration::from_secs(10));
        let now = std::time::Instant::now();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        assert!(seen.first_time(&a, now));
        assert!(!seen.first_time(&a, now + std::time::Duration::from_secs(5)));
        assert!(seen.first_time(&b, now));
        assert!(seen.first_time(&a, now + std::time::Duration::from_secs(11)));
        assert!(!seen.first_time("not a tag", now), "no tag, no entry");
    }
}
