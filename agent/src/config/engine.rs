//! The `[engine]` section: what every engine has (where it listens, its admin account,
//! its data, how it is stopped and started) in `[engine]` itself, and what only one
//! engine knows in that engine's own section (`[engine.mariadb]`). The defaults of the
//! shared fields that differ between engines (port, admin user, data directory) come
//! from the engine named by `kind`, so a configuration names only what differs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tandem_proto::EngineKind;

use super::read_secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    pub kind: EngineKind,
    /// The address replicas use to reach this engine (advertised to the conductor).
    pub host: String,
    /// Default: the engine's own (MariaDB 3306, PostgreSQL 5432).
    pub port: Option<u16>,
    /// The account the agent works through. Default: MariaDB `root`, PostgreSQL
    /// `postgres`.
    pub admin_user: Option<String>,
    pub admin_password_file: Option<PathBuf>,
    /// Default: MariaDB `/var/lib/mysql`, PostgreSQL `/var/lib/postgresql/data`.
    pub data_dir: Option<PathBuf>,
    pub backup_dir: PathBuf,
    /// How the agent stops and starts the engine (e.g. `systemctl stop mariadb`).
    pub stop_command: Option<Vec<String>>,
    pub start_command: Option<Vec<String>>,
    /// The CA every engine's certificate chains to (PEM). When set, replication between
    /// engines is TLS only: replication accounts require it, and a replica verifies its
    /// source's certificate (which must name the address it is reached at). Each
    /// server's own certificate is the engine's own setting (MariaDB `ssl_cert`).
    pub tls_ca_file: Option<PathBuf>,
    /// What only MariaDB knows; read when `kind` is `mariadb`.
    pub mariadb: MariadbConfig,
    /// Fields that moved into `[engine.mariadb]`: a configuration still naming them
    /// here is refused with their new place, never silently ignored (an ignored socket
    /// would point the agent at another server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<figment::value::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_config: Option<figment::value::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoke_read_only_bypass: Option<figment::value::Value>,
}

/// `[engine.mariadb]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MariadbConfig {
    /// The local socket the agent connects through (TCP to `host:port` when unset).
    pub socket: Option<PathBuf>,
    /// The configuration include the agent owns (a `.cnf` in `conf.d`).
    pub managed_config: Option<PathBuf>,
    /// Revoke `READ_ONLY ADMIN` from every account but the agent's own (each server on
    /// its own, not replicated), so that read-only stops every client. Off: such
    /// accounts are only reported, as fencing hazards.
    pub revoke_read_only_bypass: bool,
}

impl Default for MariadbConfig {
    fn default() -> Self {
        MariadbConfig {
            socket: Some("/run/mysqld/mysqld.sock".into()),
            managed_config: Some("/etc/mysql/mariadb.conf.d/90-tandem.cnf".into()),
            revoke_read_only_bypass: true,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: EngineKind::Mariadb,
            host: "127.0.0.1".into(),
            port: None,
            admin_user: None,
            admin_password_file: None,
            data_dir: None,
            backup_dir: "/var/lib/tandem-agent/backups".into(),
            stop_command: None,
            start_command: None,
            tls_ca_file: None,
            mariadb: MariadbConfig::default(),
            socket: None,
            managed_config: None,
            revoke_read_only_bypass: None,
        }
    }
}

/// The engine's settings after validation: every default resolved for its kind, the
/// password read, and exactly the one engine-specific section that applies.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub host: String,
    pub port: u16,
    pub admin_user: String,
    pub admin_password: Option<String>,
    pub data_dir: PathBuf,
    pub backup_dir: PathBuf,
    pub stop_command: Option<Vec<String>>,
    pub start_command: Option<Vec<String>>,
    pub tls_ca_file: Option<PathBuf>,
    pub own: PerEngine,
}

/// The engine-specific part of the settings: one variant per engine, so an adapter
/// only ever sees its own section.
#[derive(Debug, Clone)]
pub enum PerEngine {
    Mariadb(MariadbConfig),
    /// No PostgreSQL-only settings yet (the adapter is the next engine).
    Postgresql,
}

impl EngineSettings {
    pub fn kind(&self) -> EngineKind {
        match self.own {
            PerEngine::Mariadb(_) => EngineKind::Mariadb,
            PerEngine::Postgresql => EngineKind::Postgresql,
        }
    }
}

/// The defaults of the shared fields that differ by engine.
struct EngineDefaults {
    port: u16,
    admin_user: &'static str,
    data_dir: &'static str,
}

fn defaults_of(kind: EngineKind) -> EngineDefaults {
    match kind {
        EngineKind::Mariadb => EngineDefaults {
            port: 3306,
            admin_user: "root",
            data_dir: "/var/lib/mysql",
        },
        EngineKind::Postgresql => EngineDefaults {
            port: 5432,
            admin_user: "postgres",
            data_dir: "/var/lib/postgresql/data",
        },
    }
}

impl EngineConfig {
    pub(super) fn validate(self) -> Result<EngineSettings> {
        for (moved, given) in [
            ("socket", self.socket.is_some()),
            ("managed_config", self.managed_config.is_some()),
            (
                "revoke_read_only_bypass",
                self.revoke_read_only_bypass.is_some(),
            ),
        ] {
            anyhow::ensure!(
                !given,
                "field `engine.{moved}` moved to `engine.mariadb.{moved}` (the `[engine.mariadb]` \
                 section; env TANDEM_AGENT_ENGINE__MARIADB__{}); move it there",
                moved.to_uppercase()
            );
        }
        let admin_password = self
            .admin_password_file
            .as_deref()
            .map(|f| read_secret(f, "engine.admin_password_file"))
            .transpose()?;
        if let Some(ca) = &self.tls_ca_file {
            // The path goes into the engine's replication statements: plain characters.
            let text = ca.display().to_string();
            anyhow::ensure!(
                !text.contains(['\'', '\\', '\n']),
                "field `engine.tls_ca_file` ({text:?}) holds a quote, backslash or newline"
            );
            std::fs::read(ca).with_context(|| {
                format!("field `engine.tls_ca_file`: cannot read {}", ca.display())
            })?;
        }
        let defaults = defaults_of(self.kind);
        let own = match self.kind {
            EngineKind::Mariadb => PerEngine::Mariadb(self.mariadb),
            EngineKind::Postgresql => PerEngine::Postgresql,
        };
        Ok(EngineSettings {
            host: self.host,
            port: self.port.unwrap_or(defaults.port),
            admin_user: self
                .admin_user
                .unwrap_or_else(|| defaults.admin_user.into()),
            admin_password,
            data_dir: self.data_dir.unwrap_or_else(|| defaults.data_dir.into()),
            backup_dir: self.backup_dir,
            stop_command: self.stop_command,
            start_command: self.start_command,
            tls_ca_file: self.tls_ca_file,
            own,
        })
    }
}
