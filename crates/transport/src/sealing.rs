//! Sealing secrets to one agent: an anonymous sealed box (X25519 + XSalsa20-Poly1305,
//! libsodium's `crypto_box_seal`, through the `crypto_box` crate) to the X25519 form of
//! the agent's Ed25519 key.
//!
//! Why the signing key and not a second key: the conductor pins exactly one key per
//! instance at enrolment, and whatever it seals must reach that instance and nobody
//! else. Deriving the encryption key from the pinned one (the birational map libsodium
//! offers as `crypto_sign_ed25519_pk_to_curve25519`, and `age` uses for ssh-ed25519
//! recipients) leaves no second key to publish, pin, rotate or forge: re-keying an
//! instance re-keys both. The two uses never share a message format (a signature is
//! never a box), which is what makes the reuse sound.

use crypto_box::aead::OsRng;
use tandem_proto::{AgentKey, Sealed, Secret};

use crate::identity::PublicKey;

/// Why a secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("key {0} is not a valid Ed25519 public key; nothing can be sealed to it")]
    BadKey(String),
    #[error(
        "the secret is not sealed to this agent's key (sealed to another key, or the \
         instance was re-keyed since), or it was altered on the way"
    )]
    NotForMe,
}

/// The private half an agent opens sealed secrets with.
pub(crate) struct Opener(crypto_box::SecretKey);

impl Opener {
    /// From the X25519 scalar libsodium derives from the agent's Ed25519 key.
    pub(crate) fn from_scalar(scalar: [u8; 32]) -> Opener {
        Opener(crypto_box::SecretKey::from(scalar))
    }

    pub(crate) fn open(&self, sealed: &Sealed) -> Result<Secret, SealError> {
        let bytes = sealed.to_bytes().ok_or(SealError::NotForMe)?;
        let plain = self.0.unseal(&bytes).map_err(|_| SealError::NotForMe)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| SealError::NotForMe)
    }
}

/// One agent's key, ready to seal to: made first, so that a key nothing can be sealed to
/// is found before anything is changed.
pub struct SealTo(crypto_box::PublicKey);

impl SealTo {
    pub fn new(key: &PublicKey) -> Result<SealTo, SealError> {
        let edwards = ed25519_dalek::VerifyingKey::from_bytes(key.as_bytes())
            .map_err(|_| SealError::BadKey(key.to_hex()))?;
        Ok(SealTo(crypto_box::PublicKey::from(
            edwards.to_montgomery().to_bytes(),
        )))
    }

    /// `secret`, sealed so that only the holder of the key's private half can read it.
    pub fn seal(&self, secret: &Secret) -> Sealed {
        let bytes = self
            .0
            .seal(&mut OsRng, secret.expose().as_bytes())
            .expect("sealing fails only when the system's random source does");
        Sealed::from_bytes(&bytes)
    }
}

impl PublicKey {
    /// `secret`, sealed so that only the holder of this key's private half can read it.
    pub fn seal(&self, secret: &Secret) -> Result<Sealed, SealError> {
        Ok(SealTo::new(self)?.seal(secret))
    }
}

impl From<AgentKey> for PublicKey {
    fn from(k: AgentKey) -> PublicKey {
        PublicKey::from_bytes(*k.as_bytes())
    }
}

impl From<PublicKey> for AgentKey {
    fn from(k: PublicKey) -> AgentKey {
        AgentKey::from_bytes(*k.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SigningKey;

    fn key() -> SigningKey {
        SigningKey::random()
    }

    #[test]
    fn only_the_key_sealed_to_opens_and_nothing_shows_in_clear() {
        let (replica, other) = (key(), key());
        let secret = Secret::new("a-replication-password-0123456789");
        let sealed = replica.public_key().seal(&secret).unwrap();
        assert_eq!(replica.open(&sealed).unwrap(), secret);
        assert_eq!(other.open(&sealed), Err(SealError::NotForMe));
        // Every seal is new (an ephemeral key each time), and holds no clear text.
        let again = replica.public_key().seal(&secret).unwrap();
        assert_ne!(sealed, again);
        let wire = serde_json::to_string(&sealed).unwrap();
        assert!(!wire.contains(secret.expose()));
        assert!(!wire.contains(&hex::encode(secret.expose())));
    }

    #[test]
    fn an_altered_or_garbled_box_is_refused() {
        let replica = key();
        let sealed = replica.public_key().seal(&Secret::new("s")).unwrap();
        let mut bytes = sealed.to_bytes().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            replica.open(&Sealed::from_bytes(&bytes)),
            Err(SealError::NotForMe)
        );
        let garbled: Sealed = serde_json::from_str("\"not hex\"").unwrap();
        assert_eq!(replica.open(&garbled), Err(SealError::NotForMe));
        assert_eq!(
            replica.open(&Sealed::from_bytes(&[])),
            Err(SealError::NotForMe)
        );
    }

    #[test]
    fn a_key_off_the_curve_is_named() {
        // y = 2 has no point on edwards25519.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        let bad = PublicKey::from_bytes(bytes);
        assert!(matches!(
            bad.seal(&Secret::new("s")),
            Err(SealError::BadKey(_))
        ));
    }
}
