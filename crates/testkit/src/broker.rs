use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// A RabbitMQ virtual host of the local broker, private to one test and deleted when
/// dropped (with everything in it).
pub struct Broker {
    vhost: String,
    uri: String,
    /// Whether broker users may have been made for this vhost's agents.
    users_made: std::sync::atomic::AtomicBool,
}

impl Broker {
    pub fn new() -> Result<Broker> {
        let vhost = format!("tandem-test-{}", uuid::Uuid::new_v4().simple());
        rabbitmqctl(&["add_vhost", &vhost])?;
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])?;
        let uri = format!("{}/{}", crate::amqp_base().trim_end_matches('/'), vhost);
        Ok(Broker {
            vhost,
            uri,
            users_made: Default::default(),
        })
    }

    /// `amqp://…/<vhost>` for this test.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Drops every client connection to this test's virtual host, as a broker restart
    /// would (other tests' connections are left alone).
    pub fn close_all_connections(&self) -> Result<()> {
        rabbitmqctl(&[
            "close_all_connections",
            "-p",
            &self.vhost,
            "tandem test: simulated broker failure",
        ])
    }
}

impl Broker {
    /// A broker outage for this test's virtual host: every connection to it is closed
    /// and new ones are refused (a connection limit of zero) until [`Broker::restore`].
    /// Other tests' virtual hosts are untouched.
    pub fn outage(&self) -> Result<()> {
        rabbitmqctl(&[
            "set_vhost_limits",
            "-p",
            &self.vhost,
            r#"{"max-connections": 0}"#,
        ])?;
        self.close_all_connections()
    }

    /// The names clients gave their connections to this virtual host (Tandem names
    /// them `tandem-agent <id>` and `tandem-conductor <name>`).
    pub fn connection_names(&self) -> Result<Vec<String>> {
        let out = Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "vhost", "client_properties"])
            .output()
            .context("run rabbitmqctl")?;
        let text = String::from_utf8_lossy(&out.stdout);
        // One line per connection: `<vhost>\t[..., {"connection_name","tandem-conductor
        // conductor"}, ...]`. (`-p` does not narrow `list_connections` down.)
        Ok(text
            .lines()
            .filter(|line| line.split('\t').next() == Some(self.vhost.as_str()))
            .filter_map(|line| {
                line.split("{\"connection_name\",\"")
                    .nth(1)
                    .and_then(|rest| rest.split("\"}").next())
                    .map(str::to_owned)
            })
            .collect())
    }

    /// Ends [`Broker::outage`]: connections are accepted again.
    pub fn restore(&self) -> Result<()> {
        rabbitmqctl(&[
            "set_vhost_limits",
            "-p",
            &self.vhost,
            r#"{"max-connections": -1}"#,
        ])
    }
}

impl Broker {
    /// The prefix of broker users made for this vhost's agents (users are global: the
    /// prefix keeps parallel tests apart, and lets the drop remove them).
    pub fn user_prefix(&self) -> String {
        self.users_made
            .store(true, std::sync::atomic::Ordering::Relaxed);
        format!("{}.", self.vhost)
    }

    /// Deletes the users made for this vhost's agents, through the management API.
    fn delete_users(&self) -> Result<()> {
        let api = self.management_url();
        let users: Vec<serde_json::Value> = ureq::get(format!("{api}/api/users"))
            .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=") // guest:guest
            .call()?
            .body_mut()
            .read_json()?;
        let prefix = format!("{}.", self.vhost);
        for name in users.iter().filter_map(|u| u["name"].as_str()) {
            if name.starts_with(&prefix) {
                ureq::delete(format!("{api}/api/users/{}", name.replace('/', "%2F")))
                    .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
                    .call()?;
            }
        }
        Ok(())
    }

    /// The management API every test broker serves (enabled by `scripts/services-up`).
    pub fn management_url(&self) -> &'static str {
        "http://127.0.0.1:15672"
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Users are global, not the vhost's: deleted here, at once (an HTTP call each).
        if self.users_made.load(std::sync::atomic::Ordering::Relaxed) {
            if let Err(e) = self.delete_users() {
                eprintln!(
                    "could not delete the agents' broker users of {}: {e}",
                    self.vhost
                );
            }
        }
        // Detached: deleting a vhost takes most of a second and nothing waits for it.
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.vhost])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .context("run rabbitmqctl (is rabbitmq-server installed? see scripts/install-deps)")?;
    anyhow::ensure!(
        out.status.success(),
        "rabbitmqctl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
