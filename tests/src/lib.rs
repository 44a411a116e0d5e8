//! Helpers for the end-to-end tests in `tests/tests/` (and the demo): a cluster of real
//! processes, and checks made against what the engines say, not what Tandem says.

pub mod capture;
pub mod fleet;
pub mod hostile;
pub mod load;
pub mod promise;
pub mod provisioner;

use std::time::{Duration, Instant};

use tandem_testkit::{
    binary, AgentProcess, Broker, ConductorProcess, Forward, Host, MariaDb, MariaDbOptions,
    RootAddress,
};

pub struct Node {
    pub name: String,
    pub db: MariaDb,
    pub agent: AgentProcess,
    /// The network namespace this node runs in, when it was started isolated.
    pub host: Option<Host>,
}

/// A broker vhost, `n` MariaDB instances `db-1..db-n` with their agents, and a conductor.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// With isolated nodes: the root namespace's address and the broker forwarder.
    pub network: Option<(RootAddress, Forward)>,
    pub conductor: ConductorProcess,
    pub broker: Broker,
    /// The backup store every agent shares (a local directory, as an NFS mount would be).
    pub backups: tempfile::TempDir,
    /// With [`ClusterOptions::fence_by_cut`]: the conductor's fence command and its log.
    fence: Option<tempfile::TempDir>,
    /// How to start another node ([`Cluster::add_node`]).
    kit: NodeKit,
}

/// What starting one more node takes, kept from the cluster's start so that nodes can
/// be added later (as a provisioner makes them).
struct NodeKit {
    engine_args: Vec<String>,
    /// Every agent's extra settings (the backup store's among them).
    agent_env: Vec<(String, String)>,
    agent_users: bool,
}

impl NodeKit {
    /// Starts `name`'s server and agent, in `zone` on `host_id`; `isolated`: on a
    /// network-namespace host of its own. With per-agent broker users, `enrol` is the
    /// conductor the operator enrols it with first.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        name: &str,
        zone: &str,
        host_id: Option<String>,
        isolated: bool,
        broker: &Broker,
        network: Option<&(RootAddress, Forward)>,
        enrol: Option<&ConductorProcess>,
    ) -> Node {
        let host = isolated.then(|| Host::create().unwrap());
        let (bind, broker_uri) = match (&host, network) {
            (Some(h), Some((_, forward))) => (
                Some(h.ip.clone()),
                format!("amqp://guest:guest@{}/{}", forward.listen, broker.vhost()),
            ),
            (None, Some((root, _))) => (Some(root.ip.clone()), broker.uri().to_owned()),
            _ => (None, broker.uri().to_owned()),
        };
        let db = MariaDb::start(MariaDbOptions {
            server_id: tandem_agent::server_id_for(&name.parse().unwrap()),
            extra_args: self.engine_args.clone(),
            netns: host.as_ref().map(|h| h.name.clone()),
            bind: bind.clone(),
            small_disk: None,
        })
        .unwrap();
        let mut env = self.agent_env.clone();
        if let Some(h) = host_id {
            env.push(("TANDEM_AGENT_HOST_ID".into(), h));
        }
        if let Some(b) = &bind {
            env.push(("TANDEM_AGENT_SEED__LISTEN".into(), format!("{b}:0")));
        }
        let mut broker_uri = broker_uri;
        if let Some(c) = enrol.filter(|_| self.agent_users) {
            // The operator's enrolment: a token and a broker user of its own.
            let out = c.cli(&["--json", "instance", "enroll", name]);
            assert!(out.0, "enrol {name}: {}", out.2);
            let v: tandem_api::EnrolmentView = serde_json::from_str(&out.1).unwrap();
            env.push((
                "TANDEM_AGENT_BROKER__ENROLMENT_TOKEN".into(),
                v.token.expect("an enrolment without a key answers a token"),
            ));
            env.push((
                "TANDEM_AGENT_BROKER__USER".into(),
                v.broker_user.expect("per-agent broker users are on"),
            ));
            broker_uri = match broker_uri.split_once('@') {
                Some((scheme_user, rest)) => format!(
                    "{}://{rest}",
                    scheme_user.split("://").next().unwrap_or("amqp")
                ),
                None => broker_uri,
            };
        }
        let agent = AgentProcess::start_mariadb_in(
            host.as_ref().map(|h| h.name.as_str()),
            &binary("tandem-agent"),
            name,
            zone,
            &broker_uri,
            &db,
            &env,
        )
        .unwrap();
        Node {
            name: name.to_owned(),
            db,
            agent,
            host,
        }
    }
}

/// How a [`Cluster`] is started, beyond the defaults.
#[derive(Default, Clone)]
pub struct ClusterOptions {
    /// Extra `mariadbd` arguments for every server.
    pub engine_args: Vec<String>,
    /// Extra `TANDEM_AGENT_*` settings for every agent.
    pub agent_env: Vec<(String, String)>,
    /// Extra `TANDEM_CONDUCTOR_*` settings.
    pub conductor_env: Vec<(String, String)>,
    /// Nodes started on a host of their own (a network namespace), to be cut off.
    pub isolated: Vec<String>,
    /// The conductor's fence command cuts the fenced node's host off the network (as
    /// downing a VM's port would). Only isolated nodes can be fenced.
    pub fence_by_cut: bool,
    /// As a deployment with per-agent broker users: the conductor starts first, each
    /// instance is enrolled with `tandem instance enroll` (which makes its broker user
    /// and queue), and each agent connects as its own user with the printed token.
    pub agent_users: bool,
    /// Where node `db-(i+1)` runs: its zone and its host (`host_id`); nodes past the
    /// list run in `zone-a` on an unknown host.
    pub locations: Vec<(String, Option<String>)>,
}

impl ClusterOptions {
    /// Two zones of two hosts each: db-1 (hv-1) and db-2 (hv-2) in zone-a, db-3 (hv-3)
    /// and db-4 (hv-4) in zone-b; the conductor offers both and the DR profile `a-to-b`;
    /// with `isolated`, each server on a network-namespace host of its own.
    pub fn two_zones(isolated: bool) -> ClusterOptions {
        let at = |z: &str, h: &str| (z.to_string(), Some(h.to_string()));
        let names = ["db-1", "db-2", "db-3", "db-4"].map(String::from);
        ClusterOptions {
            locations: vec![
                at("zone-a", "hv-1"),
                at("zone-a", "hv-2"),
                at("zone-b", "hv-3"),
                at("zone-b", "hv-4"),
            ],
            conductor_env: vec![
                (
                    "TANDEM_CONDUCTOR_ZONES".into(),
                    r#"[{name="zone-a"},{name="zone-b"}]"#.into(),
                ),
                (
                    "TANDEM_CONDUCTOR_DR_PROFILES".into(),
                    r#"[{name="a-to-b", primary="zone-a", dr="zone-b"}]"#.into(),
                ),
            ],
            isolated: if isolated { names.to_vec() } else { Vec::new() },
            ..ClusterOptions::read_only_at_start()
        }
    }

    /// As on a VM with the agent's managed configuration: a server that starts (or
    /// restarts after a crash) is read-only until the conductor gives it a role.
    pub fn read_only_at_start() -> ClusterOptions {
        ClusterOptions {
            engine_args: vec!["--read-only=1".into()],
            agent_env: Vec::new(),
            conductor_env: Vec::new(),
            isolated: Vec::new(),
            fence_by_cut: false,
            agent_users: false,
            locations: Vec::new(),
        }
    }
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, ClusterOptions::default())
    }

    pub fn start_with(n: usize, options: ClusterOptions) -> Cluster {
        let broker = Broker::new().unwrap();
        let backups = tempfile::Builder::new()
            .prefix("tandem-backups-")
            .tempdir()
            .unwrap();
        let mut store = vec![(
            "TANDEM_AGENT_BACKUP_STORE__PATH".to_string(),
            backups.path().display().to_string(),
        )];
        store.extend(options.agent_env.iter().cloned());
        // With isolated nodes, everything they must reach listens on an address of
        // the root namespace that no link cut takes down; the broker (on loopback) is
        // forwarded there.
        let network = (!options.isolated.is_empty()).then(|| {
            let root = RootAddress::create().unwrap();
            let broker_at = tandem_testkit::amqp_base()
                .rsplit('@')
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_owned();
            let forward = Forward::start(&format!("{}:0", root.ip), &broker_at).unwrap();
            (root, forward)
        });
        assert!(
            !(options.agent_users && options.fence_by_cut),
            "the fence script needs the nodes before the conductor starts"
        );
        let mut conductor_env = options.conductor_env.clone();
        let early = options.agent_users.then(|| {
            conductor_env.push((
                "TANDEM_CONDUCTOR_AGENT_USERS__MANAGEMENT_URL".into(),
                broker.management_url().into(),
            ));
            conductor_env.push((
                "TANDEM_CONDUCTOR_AGENT_USERS__PREFIX".into(),
                broker.user_prefix(),
            ));
            let c = ConductorProcess::start_with(broker.uri(), &conductor_env).unwrap();
            eventually(Duration::from_secs(20), "the conductor serving", || {
                (!c.token().is_empty() && c.cli(&["instance", "keys"]).0).then_some(())
            });
            c
        });
        let kit = NodeKit {
            engine_args: options.engine_args.clone(),
            agent_env: store,
            agent_users: options.agent_users,
        };
        let nodes: Vec<Node> = (1..=n)
            .map(|i| {
                let name = format!("db-{i}");
                let (zone, host_id) = options
                    .locations
                    .get(i - 1)
                    .cloned()
                    .unwrap_or_else(|| ("zone-a".into(), None));
                let isolated = options.isolated.contains(&name);
                kit.start(
                    &name,
                    &zone,
                    host_id,
                    isolated,
                    &broker,
                    network.as_ref(),
                    early.as_ref(),
                )
            })
            .collect();
        let fence = options.fence_by_cut.then(|| {
            let dir = tempfile::Builder::new()
                .prefix("tandem-fence-")
                .tempdir()
                .unwrap();
            let script = fence_script(&nodes, &dir.path().join("fenced.log"));
            let path = dir.path().join("fence");
            std::fs::write(&path, script).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            conductor_env.push((
                "TANDEM_CONDUCTOR_FAILOVER__FENCE_COMMAND".into(),
                path.display().to_string(),
            ));
            dir
        });
        let conductor = match early {
            Some(c) => c,
            None => ConductorProcess::start_with(broker.uri(), &conductor_env).unwrap(),
        };
        let c = Cluster {
            network,
            nodes,
            conductor,
            broker,
            backups,
            fence,
            kit,
        };
        let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
        eventually(Duration::from_secs(30), "every agent reported", || {
            let (ok, out, _) = c.cli(&["status"]);
            (ok && names.iter().all(|n| out.contains(n.as_str()))).then_some(())
        });
        c
    }

    /// How many conductors are connected to this test's virtual host.
    pub fn conductors_connected(&self) -> usize {
        self.broker
            .connection_names()
            .unwrap()
            .iter()
            .filter(|n| n.starts_with("tandem-conductor"))
            .count()
    }

    /// Starts a second conductor on the acting one's store and checks that it stands
    /// by: it says so, and long enough for a conductor to connect, serve and resume
    /// workflows later it serves no API and holds no broker connection.
    pub fn standby(&self) -> ConductorProcess {
        let second = self.conductor.second_on_same_store().unwrap();
        eventually(Duration::from_secs(20), "the second to stand by", || {
            second.log().contains("standby").then_some(())
        });
        std::thread::sleep(Duration::from_secs(3));
        assert!(!second.serving(), "a standby serves the API");
        assert_eq!(
            self.conductors_connected(),
            1,
            "a standby connected to the broker: {:?}\n{}",
            self.broker.connection_names(),
            second.log()
        );
        second
    }

    /// The instances the conductor's fence command has fenced, in order.
    pub fn fenced(&self) -> Vec<String> {
        let Some(dir) = &self.fence else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.path().join("fenced.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// Starts one more server and agent, `name`, in `zone` on `host_id` (on a
    /// network-namespace host of its own when the cluster's nodes have hosts), as a
    /// cloud's provisioner would boot a VM. Returns once its agent has reported.
    pub fn add_node(&mut self, name: &str, zone: &str, host_id: Option<&str>) -> &Node {
        assert!(
            !self.nodes.iter().any(|n| n.name == name),
            "{name} runs already"
        );
        let node = self.kit.start(
            name,
            zone,
            host_id.map(str::to_owned),
            self.network.is_some(),
            &self.broker,
            self.network.as_ref(),
            Some(&self.conductor),
        );
        self.nodes.push(node);
        eventually(Duration::from_secs(30), "the new agent reported", || {
            let (ok, out, _) = self.cli(&["status"]);
            (ok && out.contains(name)).then_some(())
        });
        self.nodes.last().unwrap()
    }

    /// Serves the provisioner's next request (waited for up to `limit`) as a cloud
    /// would: each server asked for is started as the next free `db-N` on a new host
    /// `hv-N`, in the zone asked for (`zone-a` when none), and the answer names them.
    pub fn serve_provisioner(
        &mut self,
        p: &provisioner::Provisioner,
        limit: Duration,
    ) -> Vec<String> {
        let pending = p.next(limit);
        let zone = pending
            .request
            .zone
            .clone()
            .unwrap_or_else(|| "zone-a".into());
        let mut names = Vec::new();
        for _ in 0..pending.request.count {
            let n = (1..)
                .find(|n| !self.nodes.iter().any(|x| x.name == format!("db-{n}")))
                .unwrap();
            let name = format!("db-{n}");
            self.add_node(&name, &zone, Some(&format!("hv-{n}")));
            names.push(name);
        }
        let answer = serde_json::json!({ "instances": names }).to_string();
        p.answer(&pending, 0, &answer, "");
        names
    }

    /// Where clients reach each server: (address, port), in node order.
    pub fn addresses(&self) -> Vec<(String, u16)> {
        self.nodes
            .iter()
            .map(|n| (n.db.host().to_owned(), n.db.port()))
            .collect()
    }

    pub fn db(&self, name: &str) -> &MariaDb {
        &self.nodes.iter().find(|n| n.name == name).unwrap().db
    }

    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.conductor.cli(args)
    }

    /// Runs the CLI and panics with its stderr unless it succeeds.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args);
        assert!(
            ok,
            "tandem {} failed: {err}\nconductor log tail:\n{}\n{}",
            args.join(" "),
            tail(&self.conductor.log(), 40),
            self.node_logs()
        );
        out
    }

    /// The tails of every agent's log and every server's error log, for a failure
    /// message (a server that died says why there).
    pub fn node_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let errors = std::fs::read_to_string(n.db.error_log()).unwrap_or_default();
                format!(
                    "--- {} agent log tail:\n{}\n--- {} mariadbd error log tail:\n{}\n",
                    n.name,
                    tail(&n.agent.log(), 8),
                    n.name,
                    tail(&errors, 8)
                )
            })
            .collect()
    }

    /// The conductor's typed API client, with its operator token.
    pub fn api(&self) -> tandem_api::client::Client {
        self.conductor.api()
    }

    /// Runs the CLI with `--json` and reads its answer as `T` (panics with the CLI's
    /// error unless it succeeds).
    pub fn cli_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli_ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("tandem {}: {e}: {out}", args.join(" ")))
    }

    /// The set as the API shows it (retried briefly: the API may be restarting).
    pub fn set(&self, set: &str) -> tandem_api::SetView {
        let api = self.api();
        eventually(
            Duration::from_secs(10),
            &format!("set {set} from the API"),
            || api.set(set).ok(),
        )
    }

    /// A workflow and its journal, as the API shows them.
    pub fn workflow(&self, id: &str) -> tandem_api::WorkflowDetail {
        self.api().workflow(id).expect("the workflow exists")
    }

    /// Waits until the contract the API shows for `set` has no drift, then checks it
    /// against the engines themselves: the master is the only writable member, and
    /// every replica replicates from the master's port.
    pub fn converged(&self, set: &str) -> String {
        let view = eventually(
            Duration::from_secs(20),
            "the contract to match the intent",
            || {
                let view = self.set(set);
                view.converged().then_some(view)
            },
        );
        let master = view.master.to_string();
        for m in &view.members {
            let name = m.instance.as_str();
            let observed = m.observed.clone().expect("a converged member has reported");
            let db = self.db(name);
            let read_only = db.sql("SELECT @@read_only").unwrap();
            if name == master {
                assert_eq!(read_only, "0", "master {name} must be writable");
                let status = db.sql("SHOW SLAVE STATUS").unwrap();
                match &view.pair {
                    // The active side of a pair replicates its passive side.
                    Some(pair) => {
                        let port = self.db(pair.passive.as_str()).port();
                        assert!(
                            status.contains(&format!("\t{port}\t")),
                            "active side {name} does not replicate {}: {status}",
                            pair.passive
                        );
                    }
                    None => assert_eq!(status, "", "master {name} replicates"),
                }
                assert_eq!(observed.writable, Some(true));
            } else {
                // Its source: the master, or the member it is cascaded under.
                let source = m
                    .intended
                    .replicates_from
                    .as_ref()
                    .map_or(master.clone(), |f| f.to_string());
                let source_port = self.db(&source).port().to_string();
                assert_eq!(read_only, "1", "replica {name} must be read-only");
                let status = db.sql("SHOW SLAVE STATUS").unwrap();
                assert!(
                    status.contains(&format!("\t{source_port}\t")),
                    "{name} does not replicate from {source} ({source_port}): {status}"
                );
                assert_eq!(observed.writable, Some(false));
                assert_eq!(
                    observed.replicates_from.as_ref().map(|f| f.as_str()),
                    Some(source.as_str())
                );
            }
        }
        master
    }

    /// Waits until every member but `except` (a failed one) agrees with the intent.
    pub fn converged_without(&self, set: &str, except: &str) {
        eventually(Duration::from_secs(20), "the others to converge", || {
            self.set(set)
                .members
                .iter()
                .filter(|m| m.instance.as_str() != except)
                .all(|m| m.drift.is_empty())
                .then_some(())
        });
    }

    /// Waits until no server of the cluster lets `account` write through read-only:
    /// each agent revokes `READ_ONLY ADMIN` from such accounts within a status interval
    /// of the grant reaching its engine.
    pub fn read_only_binds(&self, account: &str) {
        for node in &self.nodes {
            eventually(
                Duration::from_secs(15),
                &format!("{account} unable to bypass read_only on {}", node.name),
                || {
                    let n = node
                        .db
                        .sql(&format!(
                            "SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES \
                             WHERE GRANTEE = \"{account}\" AND PRIVILEGE_TYPE = 'READ_ONLY ADMIN'"
                        ))
                        .ok()?;
                    (n == "0").then_some(())
                },
            );
        }
    }

    /// Writes a row on the master and waits until every member has it.
    pub fn write_and_see_everywhere(&self, set: &str, master: &str, id: u32) {
        self.db(master)
            .sql(&format!(
                "CREATE DATABASE IF NOT EXISTS app; CREATE TABLE IF NOT EXISTS app.t (id INT PRIMARY KEY); \
                 INSERT INTO app.t VALUES ({id})"
            ))
            .unwrap();
        let view = self.set(set);
        for m in &view.members {
            let name = m.instance.as_str();
            if matches!(
                m.intended.role,
                tandem_api::IntendedRole::Failed | tandem_api::IntendedRole::Quarantined
            ) {
                continue;
            }
            eventually(
                Duration::from_secs(15),
                &format!("row {id} on {name}"),
                || {
                    (self
                        .db(name)
                        .sql(&format!("SELECT COUNT(*) FROM app.t WHERE id = {id}"))
                        .ok()?
                        == "1")
                        .then_some(())
                },
            );
        }
    }
}

pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A fence command that cuts the named node's host off the network and logs it.
fn fence_script(nodes: &[Node], log: &std::path::Path) -> String {
    let mut script = String::from("#!/bin/sh\nset -e\ncase \"$1\" in\n");
    for n in nodes {
        if let Some(h) = &n.host {
            script.push_str(&format!("  {}) {} ;;\n", n.name, h.cut_command()));
        }
    }
    script.push_str("  *) echo \"no host to fence for $1\" >&2; exit 1 ;;\nesac\n");
    script.push_str(&format!(
        "echo \"$1\" >> {}\necho \"cut $1 off the network\"\n",
        log.display()
    ));
    script
}

/// `tandem --json events`, running: every event the conductor publishes from now on.
/// Its output is read as it comes (a pipe left unread fills at 64 KiB and stalls the
/// stream: a fleet's events do that within seconds).
pub struct EventFollower {
    child: std::process::Child,
    lines: std::thread::JoinHandle<Vec<String>>,
}

impl EventFollower {
    pub fn start(c: &Cluster) -> EventFollower {
        Self::of(&c.conductor)
    }

    /// Following `conductor`'s events.
    pub fn of(conductor: &ConductorProcess) -> EventFollower {
        let mut child = conductor
            .cli_command()
            .args(["--json", "events"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().expect("piped");
        let lines = std::thread::spawn(move || {
            std::io::BufRead::lines(std::io::BufReader::new(stdout))
                .map_while(Result::ok)
                .collect()
        });
        EventFollower { child, lines }
    }

    /// Stops following; the events seen, each read as the API's type (a line that does
    /// not read is a failure: the stream and the type must agree).
    pub fn stop(mut self) -> Vec<tandem_api::ApiEvent> {
        self.child.kill().unwrap();
        let _ = self.child.wait();
        self.lines
            .join()
            .expect("the reader")
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event {l}: {e}")))
            .collect()
    }
}

impl Cluster {
    /// One instance as the API shows it.
    pub fn instance(&self, id: &str) -> tandem_api::InstanceView {
        self.api()
            .instance(&id.parse().unwrap())
            .unwrap_or_else(|e| panic!("instance {id}: {e}"))
    }
}
