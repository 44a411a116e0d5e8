//! The operator CLI. Every command prints a table for people or, with `--json`, JSON for
//! scripts; every error is one line on stderr and a non-zero exit.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod instance;
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
    /// A file holding the API token (the conductor writes an operator's to
    /// `data_dir/admin.token` on its first start). `TANDEM_TOKEN` holds the token itself.
    #[arg(long, global = true, env = "TANDEM_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// The CA (PEM) an `https://` conductor's certificate chains to, instead of the
    /// public roots.
    #[arg(long, global = true, env = "TANDEM_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
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
    /// Replica sets as trees: master, replicas, role, writable, lag, position, drift.
    Topology,
    /// Create or list replica sets.
    #[command(subcommand)]
    Set(SetCmd),
    /// Add or detach replicas.
    #[command(subcommand)]
    Replica(ReplicaCmd),
    /// Planned switchover: make CANDIDATE the master of SET, with no data loss.
    Promote {
        set: String,
        candidate: String,
        /// How long the candidate may take to catch up before the switchover rolls back.
        #[arg(long, value_name = "MS")]
        catch_up_timeout_ms: Option<u64>,
        /// Wait until the workflow ends; exit non-zero unless it is done.
        #[arg(long)]
        wait: bool,
    },
    /// Failover after the master is lost (eject), and the automatic failover switches.
    #[command(subcommand)]
    Failover(FailoverCmd),
    /// Take, list and delete backups.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Workflows: what the conductor did and is doing.
    #[command(subcommand)]
    Workflow(WorkflowCmd),
    /// Instance metadata (key/value).
    #[command(subcommand)]
    Metadata(MetadataCmd),
    /// Enrol instances: which agent key speaks for which instance.
    #[command(subcommand)]
    Instance(instance::InstanceCmd),
    /// Follow the live event stream: status changes and workflow progress (Ctrl-C to stop).
    Events,
    /// Every command the conductor's workflows sent: what, to whom, epoch, result.
    Audit {
        /// Instead: every API request that changed something, and whose token made it.
        #[arg(long)]
        requests: bool,
    },
}

#[derive(Subcommand)]
pub enum SetCmd {
    /// Make a standalone server the master of a new replica set.
    Create {
        set: String,
        #[arg(long)]
        master: String,
        /// Semi-synchronous replication: a failover then loses no acknowledged write.
        #[arg(long)]
        semi_sync: bool,
        #[arg(long)]
        wait: bool,
    },
    List,
    /// Switch semi-synchronous replication of a running set on or off.
    SemiSync {
        set: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum ReplicaCmd {
    /// Add read-only replicas: attach an existing server as it is, or seed fresh ones
    /// (in parallel) from a live copy or a backup first.
    Add {
        set: String,
        #[arg(required = true)]
        instances: Vec<String>,
        /// none (attach as it is), stream (a live copy), backup, or auto (a recent
        /// backup if the set has one, else stream).
        #[arg(long, default_value = "none")]
        seed: String,
        /// With --seed stream: copy from this member (default: the master).
        #[arg(long)]
        from: Option<String>,
        /// With --seed backup: this backup (default: the set's newest).
        #[arg(long)]
        backup: Option<String>,
        /// Wait until the workflow ends, showing seeding progress.
        #[arg(long)]
        wait: bool,
    },
    /// Detach a replica into an independent writable server.
    Detach {
        set: String,
        instance: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum FailoverCmd {
    /// Replace SET's lost master by a replica now: the candidate rule picks one unless
    /// --candidate names it. Refused while the master is healthy (use `promote`, which
    /// loses nothing) and for a candidate behind another replica, unless --force.
    Run {
        set: String,
        #[arg(long)]
        candidate: Option<String>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        wait: bool,
    },
    /// Pause automatic failover of SET (detection goes on and is shown).
    Pause { set: String },
    /// Resume automatic failover of SET.
    Resume { set: String },
    /// Acknowledge SET's last automatic failover: one held back by the anti-flapping
    /// window may then go ahead.
    Ack { set: String },
}

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Back up one instance into the backup store.
    Create {
        instance: String,
        /// Only the changes since PARENT (default: the instance's newest backup).
        #[arg(long)]
        incremental: bool,
        #[arg(long, requires = "incremental")]
        parent: Option<String>,
        /// Wait until it is stored, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Recorded backups, newest first, and those still running.
    List {
        #[arg(long)]
        instance: Option<String>,
    },
    /// Delete one backup (refused while incrementals depend on it).
    Delete { backup: String },
    /// Stop a running backup; the agent removes what it wrote.
    Cancel { backup: String },
}

#[derive(Subcommand)]
pub enum WorkflowCmd {
    List,
    Show {
        id: String,
    },
    /// Stop a running workflow's long steps (seeding, restores) at their next safe
    /// point, leaving their servers as they were; short steps run to their end.
    Cancel {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum MetadataCmd {
    List {
        instance: String,
    },
    Get {
        instance: String,
        key: String,
    },
    Set {
        instance: String,
        key: String,
        value: String,
    },
    Delete {
        instance: String,
        key: String,
    },
}

pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// `Bearer <token>`, when there is a token.
    authorization: Option<String>,
}

/// The API token: `TANDEM_TOKEN`, else the file named by `--token-file`.
fn token(file: Option<&std::path::Path>) -> Result<Option<String>> {
    if let Some(t) = std::env::var("TANDEM_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(Some(t.trim().to_owned()));
    }
    let Some(file) = file else {
        return Ok(None);
    };
    let t = std::fs::read_to_string(file)
        .with_context(|| format!("--token-file {}: cannot read it", file.display()))?;
    Ok(Some(t.trim().to_owned()))
}

/// The TLS settings for an `https://` conductor: its own CA, or the public roots.
fn tls(ca_file: Option<&std::path::Path>) -> Result<ureq::tls::TlsConfig> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(file) = ca_file {
        let pem = std::fs::read(file)
            .with_context(|| format!("--ca-file {}: cannot read it", file.display()))?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        anyhow::ensure!(
            !certs.is_empty(),
            "--ca-file {} holds no certificate",
            file.display()
        );
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    Ok(tls.build())
}

impl Client {
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Client> {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .tls_config(tls(ca_file)?)
            .build();
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            agent: config.into(),
            authorization: token.map(|t| format!("Bearer {t}")),
        })
    }

    fn with_token<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(a) => request.header("Authorization", a),
            None => request,
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
        self.handle(
            path,
            self.with_token(self.agent.get(format!("{}{path}", self.base)))
                .call(),
        )
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        self.handle(
            path,
            self.with_token(self.agent.post(format!("{}{path}", self.base)))
                .send_json(body),
        )
    }

    pub fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        self.handle(
            path,
            self.with_token(self.agent.put(format!("{}{path}", self.base)))
                .send_json(body),
        )
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.handle(
            path,
            self.with_token(self.agent.delete(format!("{}{path}", self.base)))
                .call(),
        )
    }
}

pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let client = Client::new(
        &cli.conductor,
        token(cli.token_file.as_deref())?,
        cli.ca_file.as_deref(),
    )?;
    let json = cli.json;
    match cli.command {
        Cmd::Instance(cmd) => instance::run(&client, cmd, json, out)?,
        Cmd::Events => {
            let events = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .tls_config(tls(cli.ca_file.as_deref())?)
                .build()
                .new_agent();
            let stream = client
                .with_token(events.get(format!("{}/v1/events", client.base)))
                .call()
                .map_err(|e| {
                    anyhow::anyhow!("cannot reach the conductor at {}: {e}", client.base)
                })?;
            if !stream.status().is_success() {
                let mut stream = stream;
                let body: Value = stream.body_mut().read_json().unwrap_or(Value::Null);
                anyhow::bail!(
                    "{}",
                    body["error"]
                        .as_str()
                        .unwrap_or("the event stream was refused")
                );
            }
            let reader = std::io::BufReader::new(stream.into_body().into_reader());
            for line in std::io::BufRead::lines(reader) {
                let line = line.context("the event stream broke")?;
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if json {
                    writeln!(out, "{data}")?;
                } else {
                    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                    writeln!(out, "{}", event_line(&v))?;
                }
                out.flush()?;
            }
        }
        Cmd::Audit { requests: true } => {
            let entries: Vec<Value> = client.get("/v1/audit/requests")?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
            } else {
                for e in &entries {
                    writeln!(
                        out,
                        "{}  {:<16} {:<6} {} -> {}",
                        e["at"],
                        e["who"].as_str().unwrap_or("?"),
                        e["method"].as_str().unwrap_or("?"),
                        e["path"].as_str().unwrap_or("?"),
                        e["status"]
                    )?;
                }
            }
        }
        Cmd::Audit { requests: false } => {
            let entries: Vec<Value> = client.get("/v1/audit")?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
            } else {
                for e in &entries {
                    let result = step_result(&e["result"]);
                    writeln!(
                        out,
                        "{}  {}  {:<24} -> {:<8} e{:<4} {}",
                        e["workflow_id"].as_str().unwrap_or("?"),
                        e["message_id"].as_str().unwrap_or("?"),
                        e["command"].as_str().unwrap_or("?"),
                        e["target"].as_str().unwrap_or("?"),
                        e["epoch"],
                        result
                    )?;
                }
            }
        }
        Cmd::Topology => {
            let sets: Vec<Value> = client.get("/v1/sets")?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&sets)?)?;
            } else {
                write!(out, "{}", topology(&sets))?;
            }
        }
        Cmd::Set(SetCmd::List) => {
            let sets: Vec<Value> = client.get("/v1/sets")?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&sets)?)?;
            } else {
                for s in &sets {
                    writeln!(
                        out,
                        "{}  master {}  epoch {}  members {}",
                        s["id"].as_str().unwrap_or("?"),
                        s["master"].as_str().unwrap_or("?"),
                        s["epoch"],
                        s["members"].as_array().map(Vec::len).unwrap_or(0)
                    )?;
                }
            }
        }
        Cmd::Set(SetCmd::SemiSync { set, state, wait }) => {
            let row: Value = client.put(
                &format!("/v1/sets/{set}/semi-sync"),
                &serde_json::json!({"enabled": state == "on"}),
            )?;
            follow(&client, out, json, row, wait)?;
        }
        Cmd::Set(SetCmd::Create {
            set,
            master,
            semi_sync,
            wait,
        }) => {
            instance_id(&master)?;
            let row: Value = client.post(
                "/v1/sets",
                &serde_json::json!({"id": set, "master": master, "semi_sync": semi_sync}),
            )?;
            follow(&client, out, json, row, wait)?;
        }
        Cmd::Replica(ReplicaCmd::Add {
            set,
            instances,
            seed,
            from,
            backup,
            wait,
        }) => {
            for i in &instances {
                instance_id(i)?;
            }
            let row: Value = client.post(
                &format!("/v1/sets/{set}/replicas"),
                &serde_json::json!({"instances": instances, "seed": seed, "from": from, "backup": backup}),
            )?;
            let mut progress = Progress::new(if wait { instances } else { Vec::new() });
            workflow_started(&client, out, json, row, wait, &mut progress)?;
        }
        Cmd::Backup(BackupCmd::Create {
            instance,
            incremental,
            parent,
            wait,
        }) => {
            instance_id(&instance)?;
            let kind = if incremental { "incremental" } else { "full" };
            let started: Value = client.post(
                &format!("/v1/instances/{instance}/backups"),
                &serde_json::json!({"kind": kind, "parent": parent}),
            )?;
            let id = started["backup_id"].as_str().unwrap_or_default().to_owned();
            if !wait {
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&started)?)?;
                } else {
                    writeln!(out, "backup {id} of {instance} started")?;
                }
                return Ok(());
            }
            let mut progress = Progress::new(vec![instance.clone()]);
            let deadline = std::time::Instant::now() + Duration::from_secs(3600);
            loop {
                progress.update(&client);
                let b: Value = client.get(&format!("/v1/backups/{id}"))?;
                match b["state"].as_str() {
                    Some("done") => {
                        progress.finish();
                        if json {
                            writeln!(out, "{}", serde_json::to_string_pretty(&b["backup"])?)?;
                        } else {
                            writeln!(out, "{}", backup_line(&b["backup"]))?;
                        }
                        return Ok(());
                    }
                    Some("failed") => {
                        progress.finish();
                        anyhow::bail!(
                            "backup {id} failed: {}",
                            b["error"].as_str().unwrap_or("no reason given")
                        );
                    }
                    _ => {}
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "backup {id} still running after an hour"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Cmd::Backup(BackupCmd::List { instance }) => {
            if let Some(i) = &instance {
                instance_id(i)?;
            }
            let path = match &instance {
                Some(i) => format!("/v1/backups?instance={i}"),
                None => "/v1/backups".into(),
            };
            let v: Value = client.get(&path)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                for b in v["backups"].as_array().into_iter().flatten() {
                    writeln!(out, "{}", backup_line(b))?;
                }
                if let Some(running) = v["running"].as_object() {
                    for (id, r) in running {
                        writeln!(
                            out,
                            "{id}  {}  {}{}",
                            r["instance"].as_str().unwrap_or("?"),
                            r["state"].as_str().unwrap_or("?"),
                            r["error"]
                                .as_str()
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default()
                        )?;
                    }
                }
            }
        }
        Cmd::Backup(BackupCmd::Delete { backup }) => {
            let v: Value = client.delete(&format!("/v1/backups/{backup}"))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(out, "backup {backup} deleted")?;
            }
        }
        Cmd::Replica(ReplicaCmd::Detach {
            set,
            instance,
            wait,
        }) => {
            instance_id(&instance)?;
            let row: Value = client.delete(&format!("/v1/sets/{set}/replicas/{instance}"))?;
            follow(&client, out, json, row, wait)?;
        }
        Cmd::Promote {
            set,
            candidate,
            catch_up_timeout_ms,
            wait,
        } => {
            instance_id(&candidate)?;
            let mut body = serde_json::json!({"candidate": candidate});
            if let Some(ms) = catch_up_timeout_ms {
                body["catch_up_timeout_ms"] = ms.into();
            }
            let row: Value = client.post(&format!("/v1/sets/{set}/switchover"), &body)?;
            follow(&client, out, json, row, wait)?;
        }
        Cmd::Failover(FailoverCmd::Run {
            set,
            candidate,
            force,
            wait,
        }) => {
            if let Some(c) = &candidate {
                instance_id(c)?;
            }
            let row: Value = client.post(
                &format!("/v1/sets/{set}/failover"),
                &serde_json::json!({"candidate": candidate, "force": force}),
            )?;
            follow(&client, out, json, row, wait)?;
        }
        Cmd::Failover(
            FailoverCmd::Pause { ref set }
            | FailoverCmd::Resume { ref set }
            | FailoverCmd::Ack { ref set },
        ) => {
            let action = match &cli.command {
                Cmd::Failover(FailoverCmd::Pause { .. }) => "pause",
                Cmd::Failover(FailoverCmd::Resume { .. }) => "resume",
                _ => "ack",
            };
            let state: Value =
                client.post(&format!("/v1/sets/{set}/failover/{action}"), &Value::Null)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&state)?)?;
            } else {
                writeln!(
                    out,
                    "set {set}: automatic failover {}{}",
                    if state["paused"] == true {
                        "paused"
                    } else {
                        "on"
                    },
                    state["blocked"]
                        .as_str()
                        .map(|b| format!("; BLOCKED: {b}"))
                        .unwrap_or_default()
                )?;
            }
        }
        Cmd::Workflow(WorkflowCmd::List) => {
            let rows: Vec<Value> = client.get("/v1/workflows")?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                for w in &rows {
                    writeln!(out, "{}", workflow_line(w))?;
                }
            }
        }
        Cmd::Backup(BackupCmd::Cancel { backup }) => {
            let v: Value = client.post(
                &format!("/v1/backups/{backup}/cancel"),
                &serde_json::json!({}),
            )?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(out, "backup {backup}: cancel requested")?;
            }
        }
        Cmd::Workflow(WorkflowCmd::Cancel { id }) => {
            let row: Value = client.post(
                &format!("/v1/workflows/{id}/cancel"),
                &serde_json::json!({}),
            )?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&row)?)?;
            } else {
                writeln!(
                    out,
                    "workflow {id} ({}): cancel requested; its long steps stop at their next \
                     safe point (follow it with `tandem workflow show {id}`)",
                    row["kind"].as_str().unwrap_or("?")
                )?;
            }
        }
        Cmd::Workflow(WorkflowCmd::Show { id }) => {
            let w: Value = client.get(&format!("/v1/workflows/{id}"))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&w)?)?;
            } else {
                writeln!(out, "{}", workflow_line(&w["workflow"]))?;
                for s in w["steps"].as_array().into_iter().flatten() {
                    let result = step_result(&s["result"]);
                    writeln!(
                        out,
                        "  {:>2}. {:<45} {:<8} {:<24} e{:<4} {}",
                        s["seq"],
                        s["step"].as_str().unwrap_or("?"),
                        s["target"].as_str().unwrap_or("?"),
                        s["command"].as_str().unwrap_or("?"),
                        s["epoch"],
                        result
                    )?;
                    // A note is a finding of the workflow (errant positions, the
                    // candidate choice and its exclusions, a failover summary): shown
                    // in full, not only with --json.
                    if s["command"] == "note" {
                        write!(out, "{}", note_lines(&s["result"]))?;
                    }
                }
            }
        }
        Cmd::Metadata(m) => {
            let (value, text): (Value, Option<String>) = match m {
                MetadataCmd::List { instance } => {
                    instance_id(&instance)?;
                    let v: Value = client.get(&format!("/v1/instances/{instance}/metadata"))?;
                    let text = v
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| format!("{k}={}\n", v.as_str().unwrap_or("")))
                                .collect()
                        })
                        .unwrap_or_default();
                    (v, Some(text))
                }
                MetadataCmd::Get { instance, key } => {
                    instance_id(&instance)?;
                    let v: Value =
                        client.get(&format!("/v1/instances/{instance}/metadata/{key}"))?;
                    let t = format!("{}\n", v["value"].as_str().unwrap_or(""));
                    (v, Some(t))
                }
                MetadataCmd::Set {
                    instance,
                    key,
                    value,
                } => {
                    instance_id(&instance)?;
                    let v: Value = client.put(
                        &format!("/v1/instances/{instance}/metadata/{key}"),
                        &serde_json::json!({"value": value}),
                    )?;
                    (v, None)
                }
                MetadataCmd::Delete { instance, key } => {
                    instance_id(&instance)?;
                    let v: Value =
                        client.delete(&format!("/v1/instances/{instance}/metadata/{key}"))?;
                    (v, None)
                }
            };
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else if let Some(t) = text {
                write!(out, "{t}")?;
            }
        }
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

/// A journaled step's result in a word or a line: in flight, ok, or the error.
/// What an operator must act on about one instance (its status report, or its member
/// view in a set), one line each: diverged, fencing hazards, settings awaiting a restart.
fn needs_attention(v: &Value, diverged: Option<&str>) -> Vec<String> {
    let strings = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut lines = Vec::new();
    if let Some(why) = diverged {
        lines.push(format!("DIVERGED: {why}"));
    }
    let hazards = strings("fencing_hazards");
    if !hazards.is_empty() {
        lines.push(format!(
            "FENCING HAZARD: {} can write while the server is read-only",
            hazards.join(", ")
        ));
    }
    if let Some(n) = v["refused_commands"].as_u64().filter(|n| *n > 0) {
        lines.push(format!(
            "REFUSED COMMANDS: {n} unsigned, forged or foreign-key commands dead-lettered \
             unread (someone with broker access is trying)"
        ));
    }
    let restart = strings("restart_needed");
    if !restart.is_empty() {
        lines.push(format!("RESTART NEEDED: {}", restart.join("; ")));
    }
    lines
}

/// A master's failsafe in a line: whose promises carry it through a broker outage,
/// and how often they did. Nothing for a replica (its master's line says it).
fn failsafe_line(f: &Value) -> Option<String> {
    if f["as"] != "master" {
        return None;
    }
    let peers: Vec<&str> = f["peers"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if peers.is_empty() {
        return None;
    }
    let held = f["held"].as_u64().unwrap_or(0);
    Some(format!(
        "failsafe: writes ride out a broker outage on promises from {}{}",
        peers.join(", "),
        if held > 0 {
            format!(" (lease held by them {held} times)")
        } else {
            String::new()
        }
    ))
}

/// A journaled finding as indented `key: value` lines; lists one item a line.
fn note_lines(note: &Value) -> String {
    let flat = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "none".to_string(),
        Value::Array(a) if a.iter().all(|x| x.is_array()) => a
            .iter()
            .map(|pair| {
                let parts: Vec<String> = pair
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect();
                parts.join(": ")
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    };
    match note {
        Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::Array(items) if !items.is_empty() && !items.iter().all(|x| x.is_array()) => {
                    let mut text = format!("        {k}:\n");
                    for item in items {
                        text.push_str(&format!("          - {}\n", flat(item)));
                    }
                    text
                }
                _ => format!("        {k}: {}\n", flat(v)),
            })
            .collect(),
        Value::Null => String::new(),
        other => format!("        {}\n", flat(other)),
    }
}

fn step_result(result: &Value) -> String {
    match result {
        Value::Null => "in flight".to_string(),
        Value::Object(m) if m.contains_key("err") => {
            format!("error: {}", m["err"]["message"].as_str().unwrap_or("?"))
        }
        _ => "ok".to_string(),
    }
}

fn event_line(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    match v["event"].as_str().unwrap_or("") {
        "instance_changed" => format!(
            "instance {}: {} writable={} from={} health={}",
            s("instance"),
            s("role"),
            v["writable"],
            s("replicates_from"),
            s("health")
        ),
        "workflow_started" => format!(
            "workflow {} started: {} on set {}",
            s("workflow"),
            s("kind"),
            s("set")
        ),
        "workflow_step" => format!(
            "workflow {} step {} {} on {}: {}",
            s("workflow"),
            v["seq"],
            s("step"),
            s("target"),
            if v["ok"] == true { "ok" } else { "failed" }
        ),
        "workflow_ended" => format!(
            "workflow {} {}{}",
            s("workflow"),
            s("state"),
            v["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        "master_verdict" => format!(
            "set {}: master {} {}{}",
            s("set"),
            s("master"),
            v["verdict"]["verdict"]
                .as_str()
                .unwrap_or("?")
                .replace('_', " "),
            v["verdict"]["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        "failover_blocked" => format!("set {}: FAILOVER BLOCKED: {}", s("set"), s("reason")),
        "restore_writes_held" => format!(
            "set {}: {} fenced itself {} times in a row: writes given back in {} ms",
            s("set"),
            s("master"),
            v["restores_in_a_row"],
            v["hold_ms"]
        ),
        "quarantined" => format!(
            "set {}: {} QUARANTINED: at {}, the master was at {} when it was promoted",
            s("set"),
            s("instance"),
            s("position"),
            s("master_position")
        ),
        other => format!("{other}: {v}"),
    }
}

fn workflow_line(w: &Value) -> String {
    let mut line = format!(
        "{}  {}  set {}  {}",
        w["id"].as_str().unwrap_or("?"),
        w["kind"].as_str().unwrap_or("?"),
        w["set_id"].as_str().unwrap_or("?"),
        w["state"].as_str().unwrap_or("?"),
    );
    if let Some(e) = w["error"].as_str() {
        line.push_str(&format!(": {e}"));
    }
    line
}

/// Prints the accepted workflow; with `wait`, follows it to its end and fails unless it
/// is done.
/// [`workflow_started`] for a workflow with nothing to show a progress bar for.
fn follow(client: &Client, out: &mut dyn Write, json: bool, row: Value, wait: bool) -> Result<()> {
    workflow_started(client, out, json, row, wait, &mut Progress::new(Vec::new()))
}

fn workflow_started(
    client: &Client,
    out: &mut dyn Write,
    json: bool,
    row: Value,
    wait: bool,
    progress: &mut Progress,
) -> Result<()> {
    let id = row["id"].as_str().unwrap_or_default().to_owned();
    if !wait {
        if json {
            writeln!(out, "{}", serde_json::to_string_pretty(&row)?)?;
        } else {
            writeln!(
                out,
                "workflow {id} started ({})",
                row["kind"].as_str().unwrap_or("?")
            )?;
        }
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        progress.update(client);
        let w: Value = client.get(&format!("/v1/workflows/{id}"))?;
        let state = w["workflow"]["state"].as_str().unwrap_or("?").to_owned();
        if state != "running" && state != "rolling_back" {
            progress.finish();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&w)?)?;
            } else {
                writeln!(out, "{}", workflow_line(&w["workflow"]))?;
            }
            anyhow::ensure!(
                state == "done",
                "workflow {id} {state}: {}",
                w["workflow"]["error"].as_str().unwrap_or("no reason given")
            );
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "workflow {id} still {state} after 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Progress bars (on stderr, when it is a terminal) for the long operations running on
/// some instances: bytes done of total, rate and ETA, from their status reports.
pub struct Progress {
    instances: Vec<String>,
    multi: indicatif::MultiProgress,
    bars: std::collections::HashMap<String, indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(instances: Vec<String>) -> Self {
        Progress {
            instances,
            multi: indicatif::MultiProgress::new(),
            bars: Default::default(),
        }
    }

    pub fn update(&mut self, client: &Client) {
        for i in &self.instances {
            let Ok(v) = client.get::<Value>(&format!("/v1/instances/{i}")) else {
                continue;
            };
            let Some(op) = v["status"]["operations"].as_array().and_then(|o| o.first()) else {
                continue;
            };
            let bar = self.bars.entry(i.clone()).or_insert_with(|| {
                let bar = self.multi.add(indicatif::ProgressBar::new(0));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:>10} {msg:<10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(i.clone());
                bar
            });
            bar.set_message(op["phase"].as_str().unwrap_or("").to_owned());
            if let Some(total) = op["bytes_total"].as_u64() {
                bar.set_length(total);
            }
            bar.set_position(op["bytes_done"].as_u64().unwrap_or(0));
        }
    }

    pub fn finish(&mut self) {
        for bar in self.bars.values() {
            bar.finish_and_clear();
        }
    }
}

fn backup_line(b: &Value) -> String {
    let kind = match b["kind"]["kind"].as_str() {
        Some("incremental") => format!(
            "incremental of {}",
            b["kind"]["parent"].as_str().unwrap_or("?")
        ),
        Some(k) => k.to_owned(),
        None => "?".into(),
    };
    format!(
        "{}  {}  {}  {} bytes  at {}  {}",
        b["backup_id"].as_str().unwrap_or("?"),
        b["instance"].as_str().unwrap_or("?"),
        kind,
        b["size_bytes"],
        b["position"]["gtid"]
            .as_str()
            .or(b["position"].as_str())
            .unwrap_or("-"),
        b["location"].as_str().unwrap_or("")
    )
}

/// One tree per replica set.
pub fn topology(sets: &[Value]) -> String {
    let mut text = String::new();
    for s in sets {
        text.push_str(&format!(
            "{} (epoch {})\n",
            s["id"].as_str().unwrap_or("?"),
            s["epoch"]
        ));
        let f = &s["failover"];
        if f.is_object() {
            let verdict = match f["verdict"]["verdict"].as_str() {
                None | Some("healthy") => "healthy".to_string(),
                Some(v) => format!(
                    "{}: {}",
                    v.replace('_', " "),
                    f["verdict"]["reason"].as_str().unwrap_or("")
                ),
            };
            text.push_str(&format!(
                "   failover {}; master {}{}\n",
                if f["automatic"] == true {
                    "automatic"
                } else {
                    "paused"
                },
                verdict,
                f["blocked"]
                    .as_str()
                    .map(|b| format!("\n   BLOCKED: {b}"))
                    .unwrap_or_default()
            ));
        }
        let members = s["members"].as_array().cloned().unwrap_or_default();
        let line = |m: &Value| {
            let position = match &m["position"] {
                Value::Object(p) => p
                    .values()
                    .next()
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
                    .to_owned(),
                _ => "-".into(),
            };
            let writable = match m["observed"]["writable"].as_bool() {
                Some(true) => "writable",
                Some(false) => "read-only",
                None => "writable?",
            };
            let lag = m["lag_seconds"]
                .as_f64()
                .map(|l| format!(" lag {l:.1}s"))
                .unwrap_or_default();
            let drift: Vec<String> = m["drift"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let drift = if drift.is_empty() {
                String::new()
            } else {
                format!("  DRIFT: {}", drift.join("; "))
            };
            let mut held = match m["intended"]["role"].as_str() {
                Some(r @ ("failed" | "quarantined")) => format!(" {}", r.to_uppercase()),
                _ => String::new(),
            };
            if let Some(semi) = m["semi_sync"].as_str() {
                held.push_str(&format!(" semi-sync {}", semi.replace('_', " ")));
            }
            if m["fenced"] == true {
                held.push_str(" FENCED");
            }
            for line in needs_attention(m, m["diverged"].as_str()) {
                held.push_str(&format!(" {line}"));
            }
            if let Some(line) = failsafe_line(&m["failsafe"]) {
                held.push_str(&format!(" {line}"));
            }
            format!(
                "{} [{} {} {}]{}{} {}{}",
                m["instance"].as_str().unwrap_or("?"),
                m["role"].as_str().unwrap_or("unknown"),
                writable,
                m["health"].as_str().unwrap_or("?"),
                held,
                lag,
                position,
                drift
            )
        };
        let master = s["master"].as_str().unwrap_or("");
        if let Some(m) = members.iter().find(|m| m["instance"] == master) {
            text.push_str(&format!("└─ {}\n", line(m)));
        }
        let replicas: Vec<&Value> = members.iter().filter(|m| m["instance"] != master).collect();
        for (i, r) in replicas.iter().enumerate() {
            let branch = if i + 1 == replicas.len() {
                "└─"
            } else {
                "├─"
            };
            text.push_str(&format!("   {branch} {}\n", line(r)));
        }
    }
    text
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
    // What an operator must act on, one line each, under the table.
    for i in instances {
        let s = &i["status"];
        let id = i["id"].as_str().unwrap_or("?");
        for line in needs_attention(s, s["replication"]["diverged"].as_str())
            .into_iter()
            .chain(failsafe_line(&s["failsafe"]))
        {
            text.push_str(&format!("{id}: {line}\n"));
        }
    }
    text
}
