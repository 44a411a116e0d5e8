//! One broker user per agent, with the least privilege (made through the RabbitMQ
//! management HTTP API when `[agent_users] management_url` is set). Every database VM
//! holds broker credentials and its tenant may hold root there; with a user of its own
//! an agent's credentials can only:
//!
//! * consume its own command queue (`read` on `tandem.agent.<id>`, nothing else),
//! * publish its own status reports and events (`write` on `tandem.status` and
//!   `tandem.events`, topic permission `<zone>.<id>` only),
//! * reply through direct reply-to (`write` on `amq.default`; a reply is only believed
//!   when signed by the agent's key, and commands published into a queue this way are
//!   refused unsigned),
//!
//! and declare nothing (`configure` on no name): the conductor declares the agent's
//! queue when it makes the user, so an agent cannot bind its queue to another agent's
//! commands. The password derives from the agent's enrolment token
//! (`tandem_transport::identity::broker_password`); re-keying the instance changes it.

use serde_json::json;
use tandem_proto::InstanceId;

/// What the conductor needs to make agents' users.
#[derive(Debug, Clone)]
pub struct BrokerUsers {
    /// `http://host:15672`.
    base: String,
    admin_user: String,
    admin_password: String,
    vhost: String,
    prefix: String,
    http: reqwest::Client,
}

/// The three permission patterns (configure, write, read) of an agent's user.
pub fn permissions(id: &InstanceId) -> (String, String, String) {
    let id = regex_escape(id.as_str());
    (
        "^$".into(),
        "^(amq\\.default|tandem\\.status|tandem\\.events)$".into(),
        format!("^tandem\\.agent\\.{id}$"),
    )
}

/// The routing keys an agent may publish status reports and events under.
pub fn topic_write(id: &InstanceId) -> String {
    format!("^[^.]+\\.{}$", regex_escape(id.as_str()))
}

/// Instance ids are `[a-z0-9_-]`: only `-` could mean anything in a pattern, and only
/// inside brackets; escaped anyway, so that the rule never rests on the id rules.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

/// `amqp://user:pass@host:port/vhost` -> (user, password, vhost), percent-decoded.
fn parse_broker_uri(uri: &str) -> Result<(String, String, String), String> {
    let rest = uri
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| format!("broker_uri {uri:?} has no scheme"))?;
    let (userinfo, hostpath) = rest
        .split_once('@')
        .ok_or("broker_uri holds no user and password: the management API needs them")?;
    let (user, password) = userinfo
        .split_once(':')
        .ok_or("broker_uri holds a user but no password")?;
    let vhost = hostpath
        .split_once('/')
        .map(|(_, v)| v.split('?').next().unwrap_or_default())
        .filter(|v| !v.is_empty())
        .unwrap_or("%2f");
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    Ok((decode(user), decode(password), decode(vhost)))
}

/// A path segment of the management API (`/` is `%2F`).
fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl BrokerUsers {
    pub fn new(
        management_url: &str,
        broker_uri: &str,
        prefix: &str,
    ) -> Result<BrokerUsers, String> {
        let (admin_user, admin_password, vhost) = parse_broker_uri(broker_uri)?;
        // reqwest's TLS (an https management URL) takes the process's crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(BrokerUsers {
            base: management_url.trim_end_matches('/').to_owned(),
            admin_user,
            admin_password,
            vhost,
            prefix: prefix.to_owned(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|e| format!("an HTTP client for the management API: {e}"))?,
        })
    }

    /// The broker user of `id`'s agent.
    pub fn user_of(&self, id: &InstanceId) -> String {
        format!("{}{id}", self.prefix)
    }

    async fn put(&self, path: &str, body: serde_json::Value) -> Result<(), String> {
        let url = format!("{}/api/{path}", self.base);
        let r = self
            .http
            .put(&url)
            .basic_auth(&self.admin_user, Some(&self.admin_password))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("the broker's management API at {}: {e}", self.base))?;
        if r.status().is_success() {
            return Ok(());
        }
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        Err(format!(
            "the broker's management API refused PUT /api/{path}: {status} {text} (the \
             conductor's broker user must have the administrator tag)"
        ))
    }

    /// Makes (or updates) `id`'s user with `password` and its permissions.
    pub async fn ensure(&self, id: &InstanceId, password: &str) -> Result<String, String> {
        let user = self.user_of(id);
        let u = encode_segment(&user);
        let v = encode_segment(&self.vhost);
        self.put(
            &format!("users/{u}"),
            json!({"password": password, "tags": ""}),
        )
        .await?;
        let (configure, write, read) = permissions(id);
        self.put(
            &format!("permissions/{v}/{u}"),
            json!({"configure": configure, "write": write, "read": read}),
        )
        .await?;
        for exchange in [
            tandem_transport::topology::STATUS_EXCHANGE,
            tandem_transport::topology::EVENTS_EXCHANGE,
        ] {
            self.put(
                &format!("topic-permissions/{v}/{u}"),
                json!({"exchange": exchange, "write": topic_write(id), "read": "^$"}),
            )
            .await?;
        }
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_patterns_name_only_its_own_queue_and_keys() {
        let id: InstanceId = "db-1".parse().unwrap();
        let (configure, write, read) = permissions(&id);
        assert_eq!(configure, "^$");
        assert_eq!(read, "^tandem\\.agent\\.db\\-1$");
        assert!(write.contains("tandem\\.status") && !write.contains("commands"));
        assert_eq!(topic_write(&id), "^[^.]+\\.db\\-1$");
    }

    #[test]
    fn the_broker_uri_gives_the_admin_and_the_vhost() {
        assert_eq!(
            parse_broker_uri("amqp://guest:gu%40st@127.0.0.1:5672/%2f").unwrap(),
            ("guest".into(), "gu@st".into(), "/".into())
        );
        assert_eq!(
            parse_broker_uri("amqp://a:b@h:1/tandem-x?frame_max=1")
                .unwrap()
                .2,
            "tandem-x"
        );
        assert_eq!(parse_broker_uri("amqp://a:b@h:1").unwrap().2, "/");
        assert!(parse_broker_uri("amqp://h:1/v").is_err());
        assert_eq!(encode_segment("/"), "%2F");
    }
}
