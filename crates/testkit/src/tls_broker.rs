//! A RabbitMQ node of a test's own that speaks only TLS (amqps), with a certificate from
//! a private test CA: a real broker, started like the tests' own `mariadbd`, on spare
//! ports, with its own data directory, stopped when dropped. The machine's broker is
//! left alone.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{free_port, Process, TestCa};

pub struct TlsBroker {
    process: Process,
    ca: TestCa,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Where Debian's RabbitMQ keeps its start script (run directly: the wrapper would
/// switch to the `rabbitmq` user, which cannot read the test's files).
/// `scripts/install-deps` installs it.
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

impl TlsBroker {
    /// Starts the node and waits until its TLS listener accepts connections.
    pub fn start() -> Result<TlsBroker> {
        let ca = TestCa::new("tandem test broker CA")?;
        let issued = ca.issue("tandem-test-broker")?;
        let dir = tempfile::Builder::new()
            .prefix("tandem-rabbit-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let port = free_port();
        let path = |p: &Path| p.display().to_string();
        let config = dir.path().join("rabbitmq.conf");
        std::fs::write(
            &config,
            format!(
                "listeners.tcp = none\n\
                 listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                ca = path(ca.ca_file()),
                cert = path(&issued.cert),
                key = path(&issued.key),
            ),
        )?;
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n")?;
        let node = format!("tandem-tls-{port}@localhost");
        let mut cmd = Command::new(SERVER);
        cmd.env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                dir.path().join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", dir.path().join("pid"))
            // Its own Erlang cookie, made there.
            .env("HOME", dir.path())
            // The script then execs the Erlang VM itself, so stopping this process stops
            // the node (otherwise a shell sits in between).
            .env("RUNNING_UNDER_SYSTEMD", "1");
        let log = dir.path().join("server.log");
        let mut process = Process::spawn(format!("rabbitmq {node}"), cmd, Some(log))
            .with_context(|| format!("start {SERVER} (is rabbitmq-server installed?)"))?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            if log.contains("completed with") {
                break;
            }
            if let Some(status) = process.try_wait() {
                anyhow::bail!("the TLS broker exited ({status}): {}", process.log_tail(20));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the TLS broker did not start within 90 s: {}",
                process.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(TlsBroker {
            process,
            ca,
            port,
            _dir: dir,
        })
    }

    /// `amqps://guest:guest@localhost:<port>/%2f`: the name the certificate holds.
    pub fn uri(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.port)
    }

    /// The CA that signed the broker's certificate (PEM), for clients to trust.
    pub fn ca_file(&self) -> &Path {
        self.ca.ca_file()
    }

    /// A CA that did not sign it: a client trusting only this must refuse the broker.
    pub fn other_ca() -> Result<TestCa> {
        TestCa::new("a CA the broker does not know")
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
