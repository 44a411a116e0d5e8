//! The scripted fake agent and a conductor around it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tandem_proto::{
    Command, CommandError, Envelope, Epoch, ErrorKind, GtidSet, InstanceId, MessageId, Position,
    ReplicaSetId, Reply, ReplyBody, Sealed, Sender, StatusReport,
};
use tandem_transport::{CallError, TransportError};
use tokio::time::Instant;

use crate::agents::AgentLink;
use crate::store::{InstanceRecord, TopologyChange, WorkflowRow};
use crate::workflow::Spec;
use crate::Conductor;

/// One command as the fake agent received it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub target: InstanceId,
    pub command: Command,
    pub message_id: MessageId,
    pub epoch: Epoch,
    pub at: Instant,
}

impl Sent {
    pub fn name(&self) -> &'static str {
        self.command.name()
    }
    pub fn is(&self, target: &str, command: &str) -> bool {
        self.target.as_str() == target && self.name() == command
    }
}

/// What the fake agent does with one command.
pub enum Answer {
    Reply(Reply),
    /// No answer at all (a frozen host): the call times out.
    Silent,
    /// The call never returns (the conductor dies while waiting).
    Hang,
}

impl Answer {
    pub fn ok(body: ReplyBody) -> Answer {
        Answer::Reply(Reply::Ok(body))
    }
    pub fn fail(kind: ErrorKind, message: &str) -> Answer {
        Answer::Reply(Reply::Err(CommandError::new(kind, message)))
    }
}

type Script = Box<dyn FnMut(&Sent) -> Answer + Send>;

pub struct FakeAgents {
    sent: Mutex<Vec<Sent>>,
    script: Mutex<Script>,
}

pub fn gtid(s: &str) -> Position {
    Position::Gtid(s.parse::<GtidSet>().expect("a GTID set"))
}

/// What a healthy agent answers: positions at `0-1-10`, a replication account, done.
pub fn healthy(sent: &Sent) -> Answer {
    match &sent.command {
        Command::GetLatestPosition
        | Command::DrainReceived { .. }
        | Command::StopWrites
        | Command::TakeOverWrites { .. } => Answer::ok(ReplyBody::Position {
            position: gtid("0-1-10"),
        }),
        Command::CreateReplicationUser { replica, .. } => Answer::ok(ReplyBody::Credentials {
            credentials: tandem_proto::ReplicationCredentials {
                user: format!("tandem_repl_{replica}"),
                password: Sealed::from_bytes(&[1, 2, 3]),
            },
        }),
        _ => Answer::ok(ReplyBody::Done),
    }
}

impl FakeAgents {
    pub fn new(script: impl FnMut(&Sent) -> Answer + Send + 'static) -> FakeAgents {
        FakeAgents {
            sent: Mutex::new(Vec::new()),
            script: Mutex::new(Box::new(script)),
        }
    }

    pub fn script(&self, script: impl FnMut(&Sent) -> Answer + Send + 'static) {
        *self.script.lock().unwrap() = Box::new(script);
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }
}

// On the `Arc`, so that the test keeps a handle on the fake the conductor calls.
impl AgentLink for Arc<FakeAgents> {
    fn call<'a>(
        &'a self,
        command: &'a Envelope<Command>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Envelope<Reply>, CallError>> {
        let sent = Sent {
            target: command.target.clone(),
            command: command.body.clone(),
            message_id: command.message_id,
            epoch: command.epoch,
            at: Instant::now(),
        };
        self.sent.lock().unwrap().push(sent.clone());
        let answer = (self.script.lock().unwrap())(&sent);
        Box::pin(async move {
            match answer {
                Answer::Reply(reply) => {
                    let mut envelope = Envelope::new(
                        Sender::Agent {
                            instance: command.target.clone(),
                        },
                        command.target.clone(),
                        command.epoch,
                        reply,
                    );
                    envelope.correlation_id = Some(command.message_id);
                    Ok(envelope)
                }
                Answer::Silent => {
                    tokio::time::sleep(timeout).await;
                    Err(CallError::TimedOut {
                        instance: command.target.clone(),
                        waited: timeout,
                    })
                }
                Answer::Hang => std::future::pending().await,
            }
        })
    }
    fn is_connected(&self) -> bool {
        true
    }
    fn ensure_agent_queue<'a>(
        &'a self,
        _instance: &'a InstanceId,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A conductor on a fresh store, reaching agents only through a [`FakeAgents`], with
/// `db-1` the master of set `s1` and `db-2`, `db-3` its replicas (enrolled, reported,
/// with addresses).
pub struct World {
    pub c: Arc<Conductor>,
    pub agents: Arc<FakeAgents>,
    _dir: tempfile::TempDir,
}

pub fn i(s: &str) -> InstanceId {
    s.parse().unwrap()
}

pub fn s1() -> ReplicaSetId {
    "s1".parse().unwrap()
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::ConductorConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let settings = config.validate().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let secret = [7u8; 32];
        let enrolments = Arc::new(crate::enrolment::Enrolments::load(&store, secret).unwrap());
        let agents = Arc::new(FakeAgents::new(healthy));
        let c = Conductor::new(
            settings,
            Box::new(store),
            Box::new(agents.clone()),
            enrolments,
            secret,
        );
        let w = World {
            c: Arc::new(c),
            agents,
            _dir: dir,
        };
        for (n, name) in ["db-1", "db-2", "db-3"].into_iter().enumerate() {
            let id = i(name);
            let key = tandem_transport::signing::SigningKey::random().public_key();
            w.c.enrolments.pin(&*w.c.store, &id, &key).unwrap();
            w.c.store
                .upsert_instance(&InstanceRecord {
                    id: id.clone(),
                    zone: "zone-a".into(),
                    engine: "mariadb".into(),
                    host: Some("10.0.0.1".into()),
                    port: Some(3306 + n as u16),
                    host_id: None,
                })
                .unwrap();
        }
        let store = &w.c.store;
        store.create_set(&s1(), &i("db-1")).unwrap();
        for r in ["db-2", "db-3"] {
            store
                .apply(
                    &s1(),
                    &TopologyChange::AddReplica {
                        instance: i(r),
                        options: Default::default(),
                        source: None,
                    },
                )
                .unwrap();
        }
        w.report("db-1", |r| r.role = tandem_proto::Role::Master);
        w.report("db-2", |_| {});
        w.report("db-3", |_| {});
        w
    }

    /// Records a fresh report of `name` (a replica of db-1, healthy, with a lease of
    /// 1500 ms), as changed by `edit`.
    pub fn report(&self, name: &str, edit: impl FnOnce(&mut StatusReport)) {
        let held = self
            .c
            .registry
            .report(&i(name))
            .map(|r| r.sequence)
            .unwrap_or(0);
        let mut r = crate::registry::sample_report(name);
        r.sequence = held + 1;
        r.lease_ms = Some(1500);
        r.zone = "zone-a".into();
        edit(&mut r);
        self.c.registry.record(r);
    }

    /// Makes db-1 and db-2 a master-master pair, db-1 active (db-3 a read replica
    /// under it).
    pub fn pair(&self) {
        self.c
            .store
            .apply(
                &s1(),
                &TopologyChange::PairUp {
                    pair: crate::store::PairRecord {
                        first: i("db-1"),
                        second: i("db-2"),
                        passive_written: 0,
                    },
                },
            )
            .unwrap();
    }

    pub fn epoch(&self) -> u64 {
        self.c.store.set(&s1()).unwrap().unwrap().epoch.get()
    }

    pub fn master(&self) -> String {
        self.c.store.set(&s1()).unwrap().unwrap().master.to_string()
    }

    /// Starts `spec` as the API would and runs it to its end; returns its record.
    pub async fn run(&self, spec: Spec) -> WorkflowRow {
        let row = self.start(spec);
        crate::workflow::run(self.c.clone(), row.clone()).await;
        self.c.store.workflow(&row.id).unwrap().unwrap()
    }

    /// Records `spec` as a running workflow without running it.
    pub fn start(&self, spec: Spec) -> WorkflowRow {
        let row = crate::workflow::new_row(spec, "test");
        self.c.store.start_workflow(&row).unwrap();
        row
    }

    pub fn switchover_to(&self, candidate: &str) -> Spec {
        let set = self.c.store.set(&s1()).unwrap().unwrap();
        Spec::Switchover {
            set: s1(),
            candidate: i(candidate),
            from: set.master,
            epoch: set.epoch,
            catch_up_timeout_ms: None,
        }
    }
}

/// The commands sent, as `target command` lines (for failure messages).
pub fn lines(sent: &[Sent]) -> String {
    sent.iter()
        .map(|s| format!("{} {} e{}", s.target, s.name(), s.epoch.get()))
        .collect::<Vec<_>>()
        .join("\n")
}
