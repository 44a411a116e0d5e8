//! A RabbitMQ cluster of a test's own: three nodes (or as many as asked) on one machine,
//! each with its own node name, AMQP and distribution ports and data directory, sharing
//! one Erlang cookie, joined into one cluster. A node can be killed (SIGKILL: the Erlang
//! VM itself, no shell in between) and started again on its data, when it rejoins. The
//! machine's broker is left alone (the nodes register with the same `epmd`, under their
//! own names).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{free_port, Process};

/// Debian's start script, run directly (see `TlsBroker`).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

struct Node {
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    process: Option<Process>,
}

pub struct BrokerCluster {
    nodes: Vec<Node>,
    /// The cookie's home, and every node's directory.
    dir: tempfile::TempDir,
    vhost: String,
}

impl BrokerCluster {
    /// Starts `n` nodes, joins them into one cluster and makes a virtual host for the
    /// test on it.
    pub fn start(n: usize) -> Result<BrokerCluster> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-rabbit-cluster-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let cookie = dir.path().join(".erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string())?;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))?;
        let mut cluster = BrokerCluster {
            nodes: Vec::new(),
            dir,
            vhost: format!("tandem-test-{}", uuid::Uuid::new_v4().simple()),
        };
        for i in 0..n {
            let port = free_port();
            let node_dir = cluster.dir.path().join(format!("node-{i}"));
            std::fs::create_dir(&node_dir)?;
            std::fs::write(
                node_dir.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.default = 127.0.0.1:{port}\n\
                     loopback_users = none\n"
                ),
            )?;
            std::fs::write(node_dir.join("enabled_plugins"), "[].\n")?;
            cluster.nodes.push(Node {
                name: format!("tandem-c{i}-{port}@localhost"),
                port,
                dist_port: free_port(),
                dir: node_dir,
                process: None,
            });
        }
        // Started together (each takes seconds), then waited for.
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_started(i)?;
        }
        let first = cluster.nodes[0].name.clone();
        for i in 1..n {
            cluster.ctl_on(i, &["stop_app"])?;
            cluster.ctl_on(i, &["join_cluster", &first])?;
            cluster.ctl_on(i, &["start_app"])?;
        }
        let vhost = cluster.vhost.clone();
        cluster.ctl(&["add_vhost", &vhost])?;
        cluster.ctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let home = self.dir.path().to_owned();
        let node = &mut self.nodes[i];
        let _ = std::fs::remove_file(node.dir.join("server.log"));
        let mut cmd = Command::new(SERVER);
        cmd.env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                node.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            .env("HOME", &home)
            // The script execs the Erlang VM itself: killing this process kills the node.
            .env("RUNNING_UNDER_SYSTEMD", "1");
        node.process = Some(
            Process::spawn(
                format!("rabbitmq {}", node.name),
                cmd,
                Some(node.dir.join("server.log")),
            )
            .with_context(|| format!("start {SERVER} (is rabbitmq-server installed?)"))?,
        );
        Ok(())
    }

    fn wait_started(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let log = std::fs::read_to_string(node.dir.join("server.log")).unwrap_or_default();
            if log.contains("completed with") {
                return Ok(());
            }
            let process = node.process.as_mut().context("the node is not running")?;
            if let Some(status) = process.try_wait() {
                anyhow::bail!("{} exited ({status}): {}", node.name, process.log_tail(20));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not start within 120 s: {}",
                node.name,
                process.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `rabbitmqctl` on node `i`.
    fn ctl_on(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = Command::new(CTL)
            .env("HOME", self.dir.path())
            .args(["-q", "-n", &self.nodes[i].name])
            .args(args)
            .output()
            .context("run rabbitmqctl")?;
        anyhow::ensure!(
            out.status.success(),
            "rabbitmqctl {args:?} on {}: {}",
            self.nodes[i].name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `rabbitmqctl` on the first running node.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let i = (0..self.nodes.len())
            .find(|i| self.nodes[*i].process.is_some())
            .context("no node is running")?;
        self.ctl_on(i, args)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/<vhost>` of node `i`.
    pub fn uri(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/{}",
            self.nodes[i].port, self.vhost
        )
    }

    /// Every node's URI, node `first` first.
    pub fn uris_from(&self, first: usize) -> Vec<String> {
        let n = self.nodes.len();
        (0..n).map(|k| self.uri((first + k) % n)).collect()
    }

    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// SIGKILL to node `i`'s Erlang VM.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].process.take() {
            p.kill();
        }
    }

    /// Starts a killed node `i` again on its data: it rejoins the cluster.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i)?;
        self.wait_started(i)
    }
}
