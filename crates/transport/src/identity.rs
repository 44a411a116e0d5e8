//! Who sent a message. Every side with a key (the conductor's, each agent's own)
//! authenticates the exact bytes of everything it publishes (commands, status reports,
//! events, replies) for its recipients (a tag each, see [`crate::mac`]) and names its
//! public key in a header. A receiver learns from the transport only *which key* made a
//! message ([`Sender`]); whether that key may speak for the instance the message names
//! is the receiver's decision (the conductor pins one key per instance at enrolment).
//!
//! Enrolment: the conductor derives a one-time token per instance and key generation
//! from its secret ([`enrolment_token`]); the operator gives it to the agent, which
//! presents, with every report until it is enrolled, a proof that binds the token to
//! its instance id and public key ([`enrolment_proof`]). A proof seen on the bus is
//! worth nothing to anyone else: it enrols only the key that made it.

use std::fmt;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use ring::hmac;

use crate::signing::{SigningKey, KEY_HEADER, MAC_HEADER};

/// Message header holding the signer's whole public key (hex), so that a receiver can
/// check a key it has not pinned yet (an agent enrolling).
pub const PUBLIC_KEY_HEADER: &str = "x-tandem-public-key";
/// Message header holding an agent's enrolment proof (hex).
pub const ENROLMENT_HEADER: &str = "x-tandem-enrolment";

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// From 64 hex digits; the error says what was wrong.
    pub fn from_hex(s: &str) -> Result<PublicKey, String> {
        tandem_proto::AgentKey::from_hex(s).map(PublicKey::from)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &self.to_hex()[..16])
    }
}

impl SigningKey {
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_hex(&self.public_hex()).expect("an Ed25519 key's public half")
    }
}

/// The key each instance speaks with, as the receiver pinned it.
pub trait KeyBook: Send + Sync + fmt::Debug {
    fn key_of(&self, instance: &tandem_proto::InstanceId) -> Option<PublicKey>;
}

/// What the transport could tell about a received message's sender.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sender {
    /// The key whose tag of the message's exact bytes (for the receiver) checked out;
    /// `None` when the message carried none for the receiver or it did not match the
    /// key it named.
    pub key: Option<PublicKey>,
    /// The enrolment proof it carried, unchecked (only the conductor can check it).
    pub enrolment: Option<String>,
}

/// Whether a message received by `me` was authenticated by `from` (whatever key it
/// names).
pub(crate) fn authenticated_by(
    properties: &BasicProperties,
    bytes: &[u8],
    me: &SigningKey,
    from: &PublicKey,
) -> bool {
    header(properties, MAC_HEADER)
        .and_then(|tags| crate::mac::tag_for(&tags, me.id()).map(|t| me.tag_checks(from, bytes, t)))
        .unwrap_or(false)
}

impl Sender {
    /// Reads and checks the headers of a message received by `me`.
    pub(crate) fn of(
        properties: &BasicProperties,
        bytes: &[u8],
        me: Option<&SigningKey>,
    ) -> Sender {
        let key = me.and_then(|me| {
            let tags = header_str(properties, MAC_HEADER)?;
            let tag = crate::mac::tag_for(tags, me.id())?;
            header_str(properties, PUBLIC_KEY_HEADER)
                .and_then(|k| PublicKey::from_hex(k).ok())
                .filter(|k| me.tag_checks(k, bytes, tag))
        });
        Sender {
            key,
            enrolment: header(properties, ENROLMENT_HEADER),
        }
    }
}

/// A string header of a message.
pub(crate) fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    header_str(properties, name).map(str::to_owned)
}

/// A string header of a message, in place (read for every report a fleet sends); one
/// that is not UTF-8 is none.
fn header_str<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a str> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        _ => None,
    }
}

/// Whether a message names its sender's whole public key, or only the key's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Naming {
    /// Reports and events: the receiver may not know the key yet (an agent enrolling).
    PublicKey,
    /// Commands and replies: the receiver knows whom it expects (the agent its trusted
    /// conductor keys, the conductor the target's pinned key), so the id is enough.
    KeyId,
}

/// The headers that authenticate `bytes` from `key` for each of `to`, with the
/// enrolment proof when there is one.
pub(crate) fn authenticated_headers(
    key: Option<&SigningKey>,
    naming: Naming,
    to: &[PublicKey],
    enrolment: Option<&str>,
    bytes: &[u8],
) -> FieldTable {
    let mut headers = FieldTable::default();
    let mut put = |name: &str, value: &str| {
        headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
    };
    if let Some(key) = key {
        put(KEY_HEADER, key.id());
        if naming == Naming::PublicKey {
            put(PUBLIC_KEY_HEADER, &key.public_hex());
        }
        put(MAC_HEADER, &tags_header(key, to, bytes));
    }
    if let Some(proof) = enrolment {
        put(ENROLMENT_HEADER, proof);
    }
    headers
}

/// The value of the tag header for `bytes` from `key` to each of `to` (a recipient
/// whose key is unusable gets none).
pub fn tags_header(key: &SigningKey, to: &[PublicKey], bytes: &[u8]) -> String {
    let tags: Vec<(String, String)> = to
        .iter()
        .filter_map(|peer| key.tag_and_id(peer, bytes))
        .collect();
    crate::mac::header_value(&tags)
}

/// The enrolment token of `instance` at key generation `generation` (re-keying an
/// instance moves it to the next generation, so an old token enrols nothing).
pub fn enrolment_token(secret: &[u8], instance: &str, generation: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(
        &key,
        format!("tandem enrolment token v1\0{instance}\0{generation}").as_bytes(),
    );
    hex::encode(&tag.as_ref()[..20])
}

/// The broker password of the agent holding `token`, when the conductor makes one
/// broker user per agent: the token is the one secret a VM is given.
pub fn broker_password(token: &str) -> String {
    let mac = hmac::Key::new(hmac::HMAC_SHA256, token.trim().as_bytes());
    hex::encode(&hmac::sign(&mac, b"tandem broker password v1").as_ref()[..24])
}

fn proof_message(instance: &str, key: &PublicKey) -> Vec<u8> {
    format!("tandem enrolment proof v1\0{instance}\0{key}").into_bytes()
}

/// What an agent holding `token` presents to enrol `key` as `instance`.
pub fn enrolment_proof(token: &str, instance: &str, key: &PublicKey) -> String {
    let mac = hmac::Key::new(hmac::HMAC_SHA256, token.trim().as_bytes());
    hex::encode(hmac::sign(&mac, &proof_message(instance, key)).as_ref())
}

/// Whether `proof` was made with `token` for `instance` and `key` (constant time).
pub fn proof_holds(token: &str, instance: &str, key: &PublicKey, proof: &str) -> bool {
    let mac = hmac::Key::new(hmac::HMAC_SHA256, token.trim().as_bytes());
    hex::decode(proof).is_ok_and(|p| hmac::verify(&mac, &proof_message(instance, key), &p).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::random()
    }

    #[test]
    fn a_sender_is_the_key_whose_tag_checks_out() {
        let (k, conductor, other) = (key(), key(), key());
        let bytes = b"a report";
        let to = [other.public_key(), conductor.public_key()];
        let props = BasicProperties::default().with_headers(authenticated_headers(
            Some(&k),
            Naming::PublicKey,
            &to,
            Some("proof"),
            bytes,
        ));
        assert!(authenticated_by(&props, bytes, &conductor, &k.public_key()));
        assert!(!authenticated_by(
            &props,
            bytes,
            &conductor,
            &other.public_key()
        ));
        let s = Sender::of(&props, bytes, Some(&conductor));
        assert_eq!(s.key, Some(k.public_key()));
        assert_eq!(s.enrolment.as_deref(), Some("proof"));
        assert_eq!(
            Sender::of(&props, bytes, Some(&other)).key,
            Some(k.public_key())
        );
        // Not a recipient, or no key to check with: no sender.
        assert_eq!(Sender::of(&props, bytes, Some(&key())).key, None);
        assert_eq!(Sender::of(&props, bytes, None).key, None);
        // Other bytes under the same headers: no sender.
        assert_eq!(Sender::of(&props, b"a rep0rt", Some(&conductor)).key, None);
        // Another key's public half with this tag: no sender.
        let mut forged = authenticated_headers(Some(&k), Naming::PublicKey, &to, None, bytes);
        forged.insert(
            PUBLIC_KEY_HEADER.into(),
            AMQPValue::LongString(key().public_hex().into()),
        );
        let props = BasicProperties::default().with_headers(forged);
        assert_eq!(Sender::of(&props, bytes, Some(&conductor)).key, None);
        assert_eq!(
            Sender::of(&BasicProperties::default(), bytes, Some(&conductor)),
            Sender::default()
        );
    }

    #[test]
    fn a_proof_enrols_only_its_own_instance_and_key() {
        let token = enrolment_token(b"secret", "db-1", 0);
        assert_ne!(token, enrolment_token(b"secret", "db-1", 1));
        assert_ne!(token, enrolment_token(b"secret", "db-2", 0));
        assert_ne!(token, enrolment_token(b"other", "db-1", 0));
        let (mine, theirs) = (key().public_key(), key().public_key());
        let proof = enrolment_proof(&token, "db-1", &mine);
        assert!(proof_holds(&token, "db-1", &mine, &proof));
        assert!(!proof_holds(&token, "db-1", &theirs, &proof));
        assert!(!proof_holds(&token, "db-2", &mine, &proof));
        assert!(!proof_holds(
            &enrolment_token(b"secret", "db-1", 1),
            "db-1",
            &mine,
            &proof
        ));
        assert!(!proof_holds(&token, "db-1", &mine, "not hex"));
    }

    #[test]
    fn public_keys_parse_from_hex_only() {
        let k = key().public_key();
        assert_eq!(PublicKey::from_hex(&k.to_hex()), Ok(k));
        assert!(PublicKey::from_hex("abcd").is_err());
        assert!(PublicKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
