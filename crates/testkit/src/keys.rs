//! The conductor's keys for tests: one command-signing key and one secret per test
//! process, written into every test conductor's data directory. Every test agent trusts
//! the signing key and enrols itself with the token derived from the secret, so that
//! every test runs with signed commands and enrolled agents, as a deployment does.

use std::sync::OnceLock;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

pub struct ConductorKey {
    /// The private key as the conductor keeps it (`conductor.key`, PKCS#8).
    pub pkcs8: Vec<u8>,
    /// The public key as agents are configured with it (64 hex digits).
    pub public_hex: String,
}

pub fn conductor_key() -> &'static ConductorKey {
    static KEY: OnceLock<ConductorKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .expect("generate a test key")
            .as_ref()
            .to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).expect("a fresh key parses");
        ConductorKey {
            public_hex: hex::encode(pair.public_key().as_ref()),
            pkcs8,
        }
    })
}

/// The conductor secret (`secret.key`) every test conductor of this process holds.
pub fn conductor_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut s).expect("random bytes");
        s
    })
}

/// The enrolment token a test conductor gives `instance` (first key generation).
pub fn enrolment_token(instance: &str) -> String {
    tandem_transport::identity::enrolment_token(conductor_secret(), instance, 0)
}

/// The keys of the agents a test started, as a conductor pins them: what a test client
/// authenticates its commands for, and checks replies against.
#[derive(Debug, Default)]
pub struct AgentKeys(
    std::sync::Mutex<
        std::collections::HashMap<tandem_proto::InstanceId, tandem_transport::identity::PublicKey>,
    >,
);

impl AgentKeys {
    pub fn add(&self, instance: &str, key: tandem_transport::identity::PublicKey) {
        let id = tandem_proto::InstanceId::new(instance).expect("a valid instance id");
        self.0.lock().expect("poisoned").insert(id, key);
    }
}

impl tandem_transport::identity::KeyBook for AgentKeys {
    fn key_of(
        &self,
        instance: &tandem_proto::InstanceId,
    ) -> Option<tandem_transport::identity::PublicKey> {
        self.0.lock().expect("poisoned").get(instance).copied()
    }
}
