//! The conductor's command-signing key for tests: one Ed25519 key per test process,
//! written into every test conductor's data directory and trusted by every test agent,
//! so that every test runs with signed commands, as a deployment does.

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
