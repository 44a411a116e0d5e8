//! Which key speaks for which instance. Anyone with a login on the broker can publish a
//! status report or a reply naming any instance; the conductor believes one only when
//! it is signed by the key pinned for that instance (see `tandem_transport::identity`).
//!
//! A key is pinned either by the operator (`tandem instance enroll ID --key KEY`) or by
//! the agent itself, presenting a proof made with the instance's one-time enrolment
//! token (`tandem instance enroll ID` prints it). Once pinned, only an operator's
//! re-key (`tandem instance rekey ID`) lets another key in: a wiped or cloned VM with a
//! new key is not silently believed.
//!
//! Deciding ([`Enrolments::admit`]) is kept apart from doing (pinning in the store and
//! raising events, in [`Enrolments::pin`] and the report intake).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use tandem_proto::InstanceId;
use tandem_transport::identity::{self, KeyBook, PublicKey, Sender};

use crate::store::{Enrolment, Store, StoreError};

/// Enrolled keys, held in memory (every report is checked) and written through to the
/// store.
pub struct Enrolments {
    secret: [u8; 32],
    entries: RwLock<HashMap<InstanceId, Enrolment>>,
    /// Refusals already raised as events: one per instance, key and reason, so that a
    /// stranger reporting every second is one event, not a flood.
    raised: Mutex<HashSet<(InstanceId, Option<PublicKey>, &'static str)>>,
}

impl std::fmt::Debug for Enrolments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.read().expect("poisoned").len();
        write!(f, "Enrolments({n} instances)")
    }
}

/// What to do with a message that names an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Signed by the instance's pinned key.
    Known,
    /// Signed by a key presenting a valid enrolment proof for an instance with no key
    /// pinned: pin it, then believe the message.
    Enrol(PublicKey),
    Refused(Refusal),
}

/// Why a message naming an instance was not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it is unsigned, or its signature does not match the key it names")]
    Unsigned,
    #[error("it is signed by key {presented}, not by the key {pinned} enrolled for this instance")]
    WrongKey {
        presented: PublicKey,
        pinned: PublicKey,
    },
    #[error(
        "the instance is not enrolled; if key {presented} is truly its agent's, enrol it \
         (`tandem instance enroll ID --key {presented}`, or give the agent the token \
         `tandem instance enroll ID` prints)"
    )]
    NotEnrolled { presented: PublicKey },
    #[error(
        "its enrolment proof does not hold for key {presented} (a token for another \
         instance, or one from before a re-key)"
    )]
    BadProof { presented: PublicKey },
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::WrongKey { .. } => "wrong_key",
            Refusal::NotEnrolled { .. } => "not_enrolled",
            Refusal::BadProof { .. } => "bad_proof",
        }
    }

    fn presented(&self) -> Option<PublicKey> {
        match self {
            Refusal::Unsigned => None,
            Refusal::WrongKey { presented, .. }
            | Refusal::NotEnrolled { presented }
            | Refusal::BadProof { presented } => Some(*presented),
        }
    }
}

impl Enrolments {
    pub fn load(store: &dyn Store, secret: [u8; 32]) -> Result<Enrolments, StoreError> {
        let entries = store
            .enrolments()?
            .into_iter()
            .map(|e| (e.instance.clone(), e))
            .collect();
        Ok(Enrolments {
            secret,
            entries: RwLock::new(entries),
            raised: Mutex::default(),
        })
    }

    fn entry(&self, instance: &InstanceId) -> Enrolment {
        self.entries
            .read()
            .expect("poisoned")
            .get(instance)
            .cloned()
            .unwrap_or_else(|| Enrolment {
                instance: instance.clone(),
                key: None,
                generation: 0,
            })
    }

    /// Whether a message naming `instance`, sent by `sender`, is believed.
    pub fn admit(&self, instance: &InstanceId, sender: &Sender) -> Admission {
        let Some(presented) = sender.key else {
            return Admission::Refused(Refusal::Unsigned);
        };
        let entry = self.entry(instance);
        match entry.key {
            Some(pinned) if pinned == presented => Admission::Known,
            Some(pinned) => Admission::Refused(Refusal::WrongKey { presented, pinned }),
            None => match &sender.enrolment {
                None => Admission::Refused(Refusal::NotEnrolled { presented }),
                Some(proof) => {
                    let token = self.token_at(instance, entry.generation);
                    if identity::proof_holds(&token, instance.as_str(), &presented, proof) {
                        Admission::Enrol(presented)
                    } else {
                        Admission::Refused(Refusal::BadProof { presented })
                    }
                }
            },
        }
    }

    /// Whether this refusal is news (not yet raised for this instance, key and reason).
    pub fn first_refusal(&self, instance: &InstanceId, refusal: &Refusal) -> bool {
        let mut raised = self.raised.lock().expect("poisoned");
        // Bounded: a flood of made-up names must not grow the set for ever.
        if raised.len() > 10_000 {
            raised.clear();
        }
        raised.insert((instance.clone(), refusal.presented(), refusal.kind()))
    }

    /// The token of `instance`'s current key generation, pinned or not: what its broker
    /// password derives from (see `crate::broker_users`).
    pub fn current_token(&self, instance: &InstanceId) -> String {
        self.token_at(instance, self.entry(instance).generation)
    }

    fn token_at(&self, instance: &InstanceId, generation: u64) -> String {
        identity::enrolment_token(&self.secret, instance.as_str(), generation)
    }

    /// The enrolment token of `instance`, for its agent's configuration; an error when a
    /// key is already pinned (a token would enrol nothing).
    pub fn token(&self, instance: &InstanceId) -> Result<(Enrolment, String), StoreError> {
        let entry = self.entry(instance);
        match entry.key {
            Some(k) => Err(StoreError::Conflict(format!(
                "instance {instance} is already enrolled with key {k}; to give it a new key, \
                 re-key it first (`tandem instance rekey {instance}`)"
            ))),
            None => {
                let token = self.token_at(instance, entry.generation);
                Ok((entry, token))
            }
        }
    }

    /// Pins `key` for `instance` (store first, then memory).
    pub fn pin(
        &self,
        store: &dyn Store,
        instance: &InstanceId,
        key: &PublicKey,
    ) -> Result<Enrolment, StoreError> {
        let e = store.pin_key(instance, key)?;
        self.entries
            .write()
            .expect("poisoned")
            .insert(instance.clone(), e.clone());
        Ok(e)
    }

    /// Forgets `instance`'s key: nothing it sends is believed until it enrols again,
    /// with a new token or an operator's `--key`.
    pub fn rekey(&self, store: &dyn Store, instance: &InstanceId) -> Result<Enrolment, StoreError> {
        let e = store.unpin_key(instance)?;
        self.entries
            .write()
            .expect("poisoned")
            .insert(instance.clone(), e.clone());
        self.raised
            .lock()
            .expect("poisoned")
            .retain(|(i, _, _)| i != instance);
        Ok(e)
    }

    /// Every instance's enrolment, for the API.
    pub fn all(&self) -> Vec<Enrolment> {
        let mut v: Vec<Enrolment> = self
            .entries
            .read()
            .expect("poisoned")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.instance.cmp(&b.instance));
        v
    }
}

impl KeyBook for Enrolments {
    fn key_of(&self, instance: &InstanceId) -> Option<PublicKey> {
        self.entry(instance).key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_transport::signing::SigningKey;

    fn enrolments() -> Enrolments {
        Enrolments {
            secret: [7; 32],
            entries: Default::default(),
            raised: Default::default(),
        }
    }

    fn key() -> PublicKey {
        SigningKey::from_pkcs8(&SigningKey::generate().unwrap())
            .unwrap()
            .public_key()
    }

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    #[test]
    fn only_the_pinned_key_or_a_valid_proof_is_believed() {
        let e = enrolments();
        let db1 = id("db-1");
        let (mine, theirs) = (key(), key());
        let unsigned = Sender::default();
        assert_eq!(
            e.admit(&db1, &unsigned),
            Admission::Refused(Refusal::Unsigned)
        );
        let plain = Sender {
            key: Some(mine),
            enrolment: None,
        };
        assert_eq!(
            e.admit(&db1, &plain),
            Admission::Refused(Refusal::NotEnrolled { presented: mine })
        );
        let (_, token) = e.token(&db1).unwrap();
        let with_proof = |k: PublicKey, for_instance: &str| Sender {
            key: Some(k),
            enrolment: Some(identity::enrolment_proof(&token, for_instance, &k)),
        };
        assert_eq!(
            e.admit(&db1, &with_proof(mine, "db-1")),
            Admission::Enrol(mine)
        );
        // A proof for another instance, or a token that is not this conductor's.
        assert_eq!(
            e.admit(&id("db-2"), &with_proof(mine, "db-1")),
            Admission::Refused(Refusal::BadProof { presented: mine })
        );
        // Pinned: the proof no longer matters, the key does.
        e.entries.write().unwrap().insert(
            db1.clone(),
            Enrolment {
                instance: db1.clone(),
                key: Some(mine),
                generation: 0,
            },
        );
        assert_eq!(e.admit(&db1, &plain), Admission::Known);
        assert_eq!(
            e.admit(&db1, &with_proof(theirs, "db-1")),
            Admission::Refused(Refusal::WrongKey {
                presented: theirs,
                pinned: mine
            })
        );
        assert!(e.token(&db1).is_err());
        // After a re-key (next generation) the old token enrols nothing.
        e.entries.write().unwrap().insert(
            db1.clone(),
            Enrolment {
                instance: db1.clone(),
                key: None,
                generation: 1,
            },
        );
        assert_eq!(
            e.admit(&db1, &with_proof(theirs, "db-1")),
            Admission::Refused(Refusal::BadProof { presented: theirs })
        );
    }

    #[test]
    fn a_refusal_is_raised_once_per_instance_key_and_reason() {
        let e = enrolments();
        let r = Refusal::NotEnrolled { presented: key() };
        assert!(e.first_refusal(&id("db-1"), &r));
        assert!(!e.first_refusal(&id("db-1"), &r));
        assert!(e.first_refusal(&id("db-2"), &r));
        assert!(e.first_refusal(&id("db-1"), &Refusal::Unsigned));
    }
}
