//! The operator CLI. Every command prints a table for people or, with `--json`, JSON for
//! scripts; every error is one line on stderr and a non-zero exit. Every call goes
//! through the typed client of `tandem-api`: no answer is read by string key.
//!
//! `lib.rs` holds the command line; each group of commands has its module ([`sets`],
//! [`backups`], [`workflows`], [`status`], [`instance`]), and [`render`] turns answers
//! into lines.

use std::io::Write;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use tandem_api::client::Client;

mod backups;
mod instance;
mod paging;
mod placement;
mod render;
mod sets;
mod status;
mod workflows;

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
        /// Only those that report this zone.
        #[arg(long)]
        zone: Option<String>,
        /// Only the members of this replica set.
        #[arg(long)]
        set: Option<String>,
        /// Only those whose engine reports this role (standalone, master, replica, unknown).
        #[arg(long)]
        role: Option<String>,
        /// Only those in this health (starting, healthy, degraded, engine_down, stopping).
        #[arg(long)]
        health: Option<String>,
        #[command(flatten)]
        page: paging::PageArgs,
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
    /// Zones and DR profiles.
    #[command(subcommand)]
    Zone(placement::ZoneCmd),
    /// Multi-zone disaster recovery: move a DR set's writer to its other zone.
    #[command(subcommand)]
    Dr(DrCmd),
    /// Placement rules: affinity and anti-affinity by host or zone.
    #[command(subcommand)]
    Rule(placement::RuleCmd),
    /// Follow the live event stream: status changes and workflow progress (Ctrl-C to stop).
    Events,
    /// Every command the conductor's workflows sent: what, to whom, epoch, result.
    Audit {
        /// Instead: every API request that changed something, and whose token made it.
        #[arg(long, conflicts_with_all = ["workflow", "instance", "set", "limit", "after"])]
        requests: bool,
        /// Only this workflow's commands.
        #[arg(long)]
        workflow: Option<String>,
        /// Only commands sent to this instance.
        #[arg(long)]
        instance: Option<String>,
        /// Only commands of this set's workflows.
        #[arg(long)]
        set: Option<String>,
        #[command(flatten)]
        page: paging::PageArgs,
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
        /// A placement rule the set keeps (id or name; several allowed). None: soft
        /// anti-affinity by host.
        #[arg(long = "rule", value_name = "RULE")]
        rules: Vec<String>,
        /// Multi-zone DR: a DR profile (`tandem zone list`); a DR source is taken from
        /// the pool in its DR zone and copied from the master.
        #[arg(long, value_name = "PROFILE")]
        dr: Option<String>,
        /// With --dr: this many more DR replicas, cascading from the DR source.
        #[arg(long, value_name = "N", default_value_t = 0, requires = "dr")]
        dr_replicas: u32,
        /// With --dr and --semi-sync: which replicas acknowledge; other-zone: only
        /// those outside the master's zone (losing its zone loses no acknowledged write).
        #[arg(long, default_value = "any", requires = "dr")]
        ack_from: tandem_api::AckFrom,
        /// master-master: a pair of the master and --peer, each replicating the other,
        /// the master the writable (active) side.
        #[arg(long, default_value = "master-slave")]
        mode: tandem_api::SetMode,
        /// With --mode master-master: the other side, empty (seeded from the master)
        /// or holding the master's data.
        #[arg(long, value_name = "INSTANCE")]
        peer: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Replica sets by id (every one unless --limit or --after asks for a page).
    List {
        /// Only the set this instance is a member of.
        #[arg(long)]
        instance: Option<String>,
        /// Only sets with a member in this zone.
        #[arg(long)]
        zone: Option<String>,
        #[command(flatten)]
        page: paging::PageArgs,
    },
    /// Restore the master from a replica: a fresh server from the pool (placed by the
    /// set's rules, in the master's zone unless --zone) is copied from FROM, attached,
    /// and switched over to, as one workflow.
    RebuildMaster {
        set: String,
        #[arg(long)]
        from: String,
        /// Through a full backup of FROM in the backup store (e.g. Swift), not a live copy.
        #[arg(long, value_parser = ["stream", "backup"], default_value = "stream")]
        via: String,
        #[arg(long)]
        zone: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Switch semi-synchronous replication of a running set on or off.
    SemiSync {
        set: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long)]
        wait: bool,
    },
}

/// A filtered replica: only some databases' changes applied (never promoted).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DatabasesArgs {
    /// Apply only these databases (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "DB,...")]
    pub databases: Vec<String>,
    /// Apply every database but these (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "DB,...",
        conflicts_with = "databases"
    )]
    pub exclude_databases: Vec<String>,
}

impl DatabasesArgs {
    pub fn filter(self) -> Option<tandem_proto::DatabaseFilter> {
        if !self.databases.is_empty() {
            Some(tandem_proto::DatabaseFilter::Only(self.databases))
        } else if !self.exclude_databases.is_empty() {
            Some(tandem_proto::DatabaseFilter::Except(self.exclude_databases))
        } else {
            None
        }
    }
}

#[derive(Subcommand)]
pub enum ReplicaCmd {
    /// Add read-only replicas: attach an existing server as it is, or seed fresh ones
    /// (in parallel) from a live copy or a backup first.
    Add {
        set: String,
        #[arg(required_unless_present = "count")]
        instances: Vec<String>,
        /// Take N servers from the free pool that keep the set's placement rules
        /// (seeded with --seed auto unless told otherwise).
        #[arg(long, value_name = "N", conflicts_with = "instances")]
        count: Option<u32>,
        /// With --count: only servers in this zone.
        #[arg(long, requires = "count")]
        zone: Option<String>,
        /// none (attach as it is), stream (a live copy), backup, or auto (a recent
        /// backup if the set has one, else stream). Default: none, auto with --count.
        #[arg(long)]
        seed: Option<tandem_api::SeedMethod>,
        /// With --seed stream: copy from this member (default: the replica's source).
        #[arg(long)]
        from: Option<String>,
        /// A cascaded replica: replicate from this member, not the master (so a busy
        /// master serves one stream for many replicas).
        #[arg(long)]
        source: Option<String>,
        /// With --seed backup: this backup (default: the set's newest).
        #[arg(long)]
        backup: Option<tandem_proto::BackupId>,
        /// A delayed replica: each transaction applied SECONDS after the master wrote
        /// it (a guard against a bad statement); never promoted.
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        delay: u64,
        #[command(flatten)]
        databases: DatabasesArgs,
        /// Wait until the workflow ends, showing seeding progress.
        #[arg(long)]
        wait: bool,
    },
    /// Change which databases a replica applies (a workflow: it re-attaches).
    Filter {
        set: String,
        instance: String,
        #[command(flatten)]
        databases: DatabasesArgs,
        /// Apply every database again.
        #[arg(long, conflicts_with_all = ["databases", "exclude_databases"])]
        all: bool,
        #[arg(long)]
        wait: bool,
    },
    /// Stop a replica applying (for a consistent snapshot, analytics, or to stop just
    /// before a bad transaction with --until-position); never promoted while paused.
    Pause {
        set: String,
        instance: String,
        /// Apply up to this position first, then stop there (e.g. 0-1-42).
        #[arg(long, value_name = "POSITION")]
        until_position: Option<tandem_proto::Position>,
        /// Pause even the last replica acknowledging to a semi-synchronous master.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        wait: bool,
    },
    /// Let a paused replica apply again, from where it stopped.
    Resume {
        set: String,
        instance: String,
        #[arg(long)]
        wait: bool,
    },
    /// Give a replica a new replication delay, in seconds (0: none).
    Delay {
        set: String,
        instance: String,
        seconds: u64,
        /// Delay even the last replica acknowledging to a semi-synchronous master.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        wait: bool,
    },
    /// Drop a delayed replica's delay so that it catches up (the same as `delay … 0`).
    CatchUp {
        set: String,
        instance: String,
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
pub enum DrCmd {
    /// "Flip the switch": the writer moves to the DR zone with no loss (the master goes
    /// read-only, the DR source catches up to its exact position and becomes the
    /// master; the old primary zone becomes the DR side). Again to switch back.
    Switch {
        set: String,
        /// How long the DR source may take to catch up before the switch rolls back.
        #[arg(long, value_name = "MS")]
        catch_up_timeout_ms: Option<u64>,
        #[arg(long)]
        wait: bool,
    },
    /// The primary zone is lost: after the lost master's lease, the most advanced
    /// member of the DR zone becomes the master; the primary zone's members are
    /// invalidated and compared with it when they return (rejoined or quarantined).
    /// Refused while the primary master is healthy, unless --force.
    Failover {
        set: String,
        #[arg(long)]
        force: bool,
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
        parent: Option<tandem_proto::BackupId>,
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
    Delete { backup: tandem_proto::BackupId },
    /// Stop a running backup; the agent removes what it wrote.
    Cancel { backup: tandem_proto::BackupId },
}

#[derive(Subcommand)]
pub enum WorkflowCmd {
    /// Workflows, newest first (the newest 100 unless --limit says).
    List {
        /// Only this set's workflows.
        #[arg(long)]
        set: Option<String>,
        /// Only workflows of this kind (failover, switchover, attach…).
        #[arg(long)]
        kind: Option<String>,
        /// Only workflows in this state (running, done, failed, rolled_back…).
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        page: paging::PageArgs,
    },
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

/// The client of the conductor the command line names.
pub fn client(cli: &Cli) -> Result<Client> {
    let ca = match &cli.ca_file {
        Some(file) => Some(
            std::fs::read(file)
                .with_context(|| format!("--ca-file {}: cannot read it", file.display()))?,
        ),
        None => None,
    };
    Client::new(
        &cli.conductor,
        token(cli.token_file.as_deref())?,
        ca.as_deref(),
    )
    .with_context(|| match &cli.ca_file {
        Some(f) => format!("--ca-file {}", f.display()),
        None => "the conductor's address".into(),
    })
}

pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let client = client(&cli)?;
    let json = cli.json;
    match cli.command {
        Cmd::Instance(cmd) => instance::run(&client, cmd, json, out),
        Cmd::Zone(cmd) => placement::zone(&client, cmd, json, out),
        Cmd::Dr(cmd) => sets::dr(&client, cmd, json, out),
        Cmd::Rule(cmd) => placement::rule(&client, cmd, json, out),
        Cmd::Events => status::events(&client, json, out),
        Cmd::Audit { requests: true, .. } => workflows::audit_requests(&client, json, out),
        Cmd::Audit {
            workflow,
            instance,
            set,
            page,
            ..
        } => {
            let query = tandem_api::AuditQuery {
                limit: page.limit,
                after: page.after,
                workflow,
                instance,
                set,
            };
            workflows::audit(&client, &query, json, out)
        }
        Cmd::Topology => sets::topology(&client, json, out),
        Cmd::Set(cmd) => sets::set(&client, cmd, json, out),
        Cmd::Replica(cmd) => sets::replica(&client, cmd, json, out),
        Cmd::Promote {
            set,
            candidate,
            catch_up_timeout_ms,
            wait,
        } => sets::promote(
            &client,
            &set,
            &candidate,
            catch_up_timeout_ms,
            wait,
            json,
            out,
        ),
        Cmd::Failover(cmd) => sets::failover(&client, cmd, json, out),
        Cmd::Backup(cmd) => backups::run(&client, cmd, json, out),
        Cmd::Workflow(cmd) => workflows::run(&client, cmd, json, out),
        Cmd::Metadata(cmd) => status::metadata(&client, cmd, json, out),
        Cmd::Status {
            follow,
            zone,
            set,
            role,
            health,
            page,
        } => {
            let query = tandem_api::InstanceQuery {
                limit: page.limit,
                after: page.after,
                zone,
                set,
                role: paging::word("role", role)?,
                health: paging::word("health", health)?,
            };
            status::status(&client, &query, follow, json, out)
        }
        Cmd::Ping { instance } => status::ping(&client, &instance, json, out),
    }
}

/// Prints `value` as JSON with `--json`, else the `text` made from it.
fn print<T: Serialize>(
    out: &mut dyn Write,
    json: bool,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    } else {
        write!(out, "{}", text(value))?;
    }
    Ok(())
}

/// Checked here so that a typo is a clear error, not an HTTP one.
fn instance_id(s: &str) -> Result<tandem_proto::InstanceId> {
    tandem_proto::InstanceId::new(s).map_err(|e| anyhow::anyhow!("invalid instance id: {e}"))
}
