//! A private certificate authority for tests: certificates for 127.0.0.1 and
//! `localhost`, usable by a server and as a client certificate (mutual TLS).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA whose files live in a temporary directory removed on drop.
pub struct TestCa {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_file: PathBuf,
}

/// A certificate and its key, in PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> Result<TestCa> {
        let dir = tempfile::Builder::new().prefix("tandem-ca-").tempdir()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem())?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            dir,
            ca_file,
        })
    }

    /// A certificate for `name`, valid for 127.0.0.1 and localhost.
    /// The CA's certificate (PEM), for clients to trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    pub fn issue(&self, name: &str) -> Result<Issued> {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&issued.cert, cert.pem())
            .with_context(|| format!("writing {}", issued.cert.display()))?;
        std::fs::write(&issued.key, key.serialize_pem())?;
        Ok(issued)
    }

    /// The agent settings that make `name`'s seeding listener and client speak TLS
    /// with a certificate from this CA.
    pub fn seed_env(&self, name: &str) -> Result<Vec<(String, String)>> {
        let issued = self.issue(name)?;
        let path = |p: &Path| p.display().to_string();
        Ok(vec![
            (
                "TANDEM_AGENT_SEED__TLS_CERT_FILE".into(),
                path(&issued.cert),
            ),
            ("TANDEM_AGENT_SEED__TLS_KEY_FILE".into(), path(&issued.key)),
            ("TANDEM_AGENT_SEED__TLS_CA_FILE".into(), path(&self.ca_file)),
        ])
    }
}
