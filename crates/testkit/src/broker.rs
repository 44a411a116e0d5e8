use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// A RabbitMQ virtual host of the local broker, private to one test and deleted when
/// dropped (with everything in it).
pub struct Broker {
    vhost: String,
    uri: String,
}

impl Broker {
    pub fn new() -> Result<Broker> {
        let vhost = format!("tandem-test-{}", uuid::Uuid::new_v4().simple());
        rabbitmqctl(&["add_vhost", &vhost])?;
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])?;
        let uri = format!("{}/{}", crate::amqp_base().trim_end_matches('/'), vhost);
        Ok(Broker { vhost, uri })
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
            .args([
                "-q",
                "list_connections",
                "-p",
                &self.vhost,
                "client_properties",
            ])
            .output()
            .context("run rabbitmqctl")?;
        let text = String::from_utf8_lossy(&out.stdout);
        // ..., {"connection_name","tandem-conductor conductor"}, ...
        Ok(text
            .split("{\"connection_name\",\"")
            .skip(1)
            .filter_map(|rest| rest.split("\"}").next().map(str::to_owned))
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
        format!("{}.", self.vhost)
    }

    /// The management API every test broker serves (enabled by `scripts/services-up`).
    pub fn management_url(&self) -> &'static str {
        "http://127.0.0.1:15672"
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Detached: deleting a vhost takes most of a second and nothing waits for it.
        // Agents' users made for this vhost go with it.
        let script = format!(
            "rabbitmqctl -q delete_vhost '{vhost}'; \
             rabbitmqctl -q list_users --no-table-headers 2>/dev/null | cut -f1 | \
             grep -F '{prefix}' | while read -r u; do rabbitmqctl -q delete_user \"$u\"; done",
            vhost = self.vhost,
            prefix = self.user_prefix()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
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
