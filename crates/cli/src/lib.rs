//! The operator CLI. Every command prints a table for people or, with `--json`, JSON for
//! scripts; every error is one line on stderr and a non-zero exit.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Operate Tandem replica sets through the conductor"
)]
pub struct Cli {
    /// The conductor's API address.
    #[arg(
        long,
        global = true,
        env = "TANDEM_CONDUCTOR_URL",
        default_value = "http://127.0.0.1:8470"
    )]
    pub conductor: String,
    /// JSON output instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Every instance with its role, writability, replication contract and health.
    Status {
        /// Keep printing as reports change (Ctrl-C to stop).
        #[arg(long)]
        follow: bool,
    },
    /// Ask one instance's agent for a pong, through the conductor and the broker.
    Ping { instance: String },
}

pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str) -> Client {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            agent: config.into(),
        }
    }

    fn handle<T: DeserializeOwned>(
        &self,
        what: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let mut response = r.map_err(|e| {
            anyhow::anyhow!("cannot reach the conductor at {} ({what}): {e}", self.base)
        })?;
        let status = response.status();
        let body: Value = response
            .body_mut()
            .read_json()
            .with_context(|| format!("the conductor's answer to {what} is not JSON ({status})"))?;
        if !status.is_success() {
            let msg = body["error"].as_str().unwrap_or("no message");
            anyhow::bail!("{msg}");
        }
        serde_json::from_value(body).with_context(|| format!("unexpected answer to {what}"))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.handle(path, self.agent.get(format!("{}{path}", self.base)).call())
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        self.handle(
            path,
            self.agent
                .post(format!("{}{path}", self.base))
                .send_json(body),
        )
    }
}

pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let client = Client::new(&cli.conductor);
    match cli.command {
        Cmd::Status { follow: false } => {
            let instances: Vec<Value> = client.get("/v1/instances")?;
            if cli.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&instances)?)?;
            } else {
                write!(out, "{}", status_table(&instances))?;
            }
        }
        Cmd::Status { follow: true } => {
            let mut last = String::new();
            loop {
                let instances: Vec<Value> = client.get("/v1/instances")?;
                let text = if cli.json {
                    serde_json::to_string(&instances)? + "\n"
                } else {
                    status_table(&instances)
                };
                if text != last {
                    write!(out, "{text}")?;
                    if !cli.json {
                        writeln!(out)?;
                    }
                    out.flush()?;
                    last = text;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Cmd::Ping { instance } => {
            let instance = instance_id(&instance)?;
            let pong: Value =
                client.post(&format!("/v1/instances/{instance}/ping"), &Value::Null)?;
            if cli.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&pong)?)?;
            } else {
                writeln!(
                    out,
                    "{}: agent {} ({}), round trip {:.2} ms",
                    pong["instance"].as_str().unwrap_or("?"),
                    pong["agent_version"].as_str().unwrap_or("?"),
                    pong["protocol"].as_str().unwrap_or("?"),
                    pong["round_trip_ms"].as_f64().unwrap_or(f64::NAN)
                )?;
            }
        }
    }
    Ok(())
}

/// Checked here so that a typo is a clear error, not an HTTP one.
fn instance_id(s: &str) -> Result<tandem_proto::InstanceId> {
    tandem_proto::InstanceId::new(s).map_err(|e| anyhow::anyhow!("invalid instance id: {e}"))
}

/// The status table: one row per instance.
pub fn status_table(instances: &[Value]) -> String {
    let mut rows = vec![[
        "INSTANCE", "ZONE", "ROLE", "WRITABLE", "FROM", "TO", "POSITION", "LAG", "HEALTH",
    ]
    .map(String::from)
    .to_vec()];
    for i in instances {
        let s = &i["status"];
        let str_of = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        let writable = match s["writable"].as_bool() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let position = match &s["position"] {
            Value::Object(m) => m.values().next().map(str_of).unwrap_or_default(),
            _ => "-".into(),
        };
        let lag = s["lag"]["seconds"]
            .as_f64()
            .map(|l| format!("{l:.1}s"))
            .unwrap_or_else(|| "-".into());
        let to: Vec<String> = s["replicates_to"]
            .as_array()
            .map(|a| a.iter().map(str_of).collect())
            .unwrap_or_default();
        rows.push(vec![
            str_of(&i["id"]),
            str_of(&i["zone"]),
            str_of(&s["role"]),
            writable.into(),
            str_of(&s["replicates_from"]),
            if to.is_empty() {
                "-".into()
            } else {
                to.join(",")
            },
            position,
            lag,
            str_of(&s["health"]),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}
