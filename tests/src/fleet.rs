//! A simulated fleet for the fan-in benchmark (issue 19): thousands of instances,
//! alone or in sets, each reporting once a second through the broker with its own key.
//!
//! A report is a real agent's, captured from a real set ([`Templates::capture`]) and
//! renamed per instance, with its set's epoch and failsafe assignment so that the
//! conductor finds nothing to mend; it is encoded, authenticated and published with
//! the properties [`tandem_transport::status_properties`] gives, which is what an
//! agent's transport sends. One connection per agent would need a broker sized for the
//! fleet (item 4 measures that), so a few connections speak for all of them.
//!
//! The baseline reads the same reports with a bare lapin consumer ([`BareConsumer`]):
//! what the broker and the wire cost, without the conductor's work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use tandem_conductor::store::sqlite::SqliteStore;
use tandem_conductor::store::{ReplicaOptions, Store, TopologyChange};
use tandem_proto::codec;
use tandem_proto::{
    Envelope, Epoch, FailsafeState, InstanceId, MessageId, ReplicaSetId, Sender, StatusReport,
    Timestamp,
};
use tandem_transport::identity::PublicKey;
use tandem_transport::signing::SigningKey;
use tandem_transport::topology::{status_key, STATUS_EXCHANGE};
use tandem_transport::{status_headers, status_properties, Transport, TransportConfig};
use tokio_util::sync::CancellationToken;

use crate::Cluster;

/// A real agent's reports as a master, as a replica and alone.
pub struct Templates {
    pub master: Envelope<StatusReport>,
    pub replica: Envelope<StatusReport>,
    pub standalone: Envelope<StatusReport>,
}

impl Templates {
    /// Starts four real servers with their agents, makes db-1 the master of db-2 and
    /// db-3 (db-4 stays alone), and keeps one report of each part once the set has
    /// converged.
    pub fn capture() -> Templates {
        let c = Cluster::start(4);
        c.cli_ok(&["set", "create", "t1", "--master", "db-1", "--wait"]);
        c.cli_ok(&["replica", "add", "t1", "db-2", "--wait"]);
        c.cli_ok(&["replica", "add", "t1", "db-3", "--wait"]);
        c.converged("t1");
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        rt.block_on(async {
            let listener = Transport::connect(
                TransportConfig::new(c.broker.uri(), "templates"),
                Default::default(),
            )
            .await
            .expect("the broker");
            let mut reports = listener.subscribe_status("#");
            let mut found: HashMap<String, Envelope<StatusReport>> = HashMap::new();
            while found.len() < 3 {
                let r = reports.next().await.expect("reports");
                let name = r.body.instance.to_string();
                if ["db-1", "db-2", "db-4"].contains(&name.as_str()) {
                    found.insert(name, r);
                }
            }
            Templates {
                master: found.remove("db-1").expect("db-1's report"),
                replica: found.remove("db-2").expect("db-2's report"),
                standalone: found.remove("db-4").expect("db-4's report"),
            }
        })
    }
}

impl Templates {
    /// Reports made here, not captured: for tests that need a fleet's load and not a
    /// real agent's bytes (no engine to start).
    pub fn plain() -> Templates {
        use tandem_proto::{EngineKind, Health, Role, VersionRange};
        let report = |role: Role, writable: bool| {
            let id: InstanceId = "template".parse().expect("an id");
            let body = StatusReport {
                instance: id.clone(),
                zone: "zone-a".into(),
                host_id: None,
                tags: vec![],
                agent_version: env!("CARGO_PKG_VERSION").into(),
                protocol: VersionRange::OURS,
                engine: EngineKind::Mariadb,
                engine_version: None,
                endpoint: None,
                seed_endpoint: None,
                role,
                writable: Some(writable),
                replicates_from: None,
                replicates_to: vec![],
                position: None,
                lag: None,
                seconds_behind_master: None,
                replication: None,
                health: Health::Healthy,
                last_error: None,
                host: Default::default(),
                highest_epoch: Epoch::ZERO,
                sequence: 0,
                taken_at: Timestamp::now(),
                operations: vec![],
                engine_settings: Default::default(),
                fenced: false,
                lease_ms: None,
                refused_commands: 0,
                failsafe: None,
                semi_sync: None,
                fencing_hazards: vec![],
                restart_needed: vec![],
                pair_side: None,
            };
            Envelope::new(
                Sender::Agent {
                    instance: id.clone(),
                },
                id,
                Epoch::ZERO,
                body,
            )
        };
        Templates {
            master: report(Role::Master, true),
            replica: report(Role::Replica, false),
            standalone: report(Role::Standalone, true),
        }
    }
}

/// One simulated instance's part.
#[derive(Debug, Clone)]
enum Part {
    Standalone,
    Master {
        set: ReplicaSetId,
        replicas: Vec<InstanceId>,
    },
    Replica {
        set: ReplicaSetId,
        master: InstanceId,
    },
}

struct Simulated {
    id: InstanceId,
    key: SigningKey,
    part: Part,
}

/// `instances` simulated instances, alone (`set_size` 1) or in sets of `set_size`.
pub struct Fleet {
    members: Vec<Simulated>,
    epochs: HashMap<ReplicaSetId, Epoch>,
}

impl Fleet {
    pub fn new(instances: usize, set_size: usize) -> Fleet {
        assert!(set_size >= 1);
        let id = |i: usize| -> InstanceId { format!("f{i:05}").parse().expect("an id") };
        let members = (0..instances)
            .map(|i| {
                let first = i - i % set_size;
                let part = if set_size == 1 {
                    Part::Standalone
                } else {
                    let set: ReplicaSetId = format!("fs{:05}", first / set_size)
                        .parse()
                        .expect("a set id");
                    if i == first {
                        Part::Master {
                            set,
                            replicas: (first + 1..(first + set_size).min(instances))
                                .map(id)
                                .collect(),
                        }
                    } else {
                        Part::Replica {
                            set,
                            master: id(first),
                        }
                    }
                };
                Simulated {
                    id: id(i),
                    key: SigningKey::random(),
                    part,
                }
            })
            .collect();
        Fleet {
            members,
            epochs: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn id(&self, i: usize) -> &InstanceId {
        &self.members[i].id
    }

    /// Writes the fleet into a conductor's store (stopped): every key pinned, every set
    /// with its members, as enrolment and `set create` / `replica add` leave them.
    pub fn seed(&mut self, store: &SqliteStore) -> anyhow::Result<()> {
        for m in &self.members {
            store.pin_key(&m.id, &public_key(&m.key))?;
            if let Part::Master { set, replicas } = &m.part {
                store.create_set(set, &m.id)?;
                let mut epoch = Epoch::ZERO;
                for r in replicas {
                    epoch = store
                        .apply(
                            set,
                            &TopologyChange::AddReplica {
                                instance: r.clone(),
                                options: ReplicaOptions::default(),
                                source: None,
                            },
                        )?
                        .epoch;
                }
                if replicas.is_empty() {
                    epoch = store.set(set)?.expect("just created").epoch;
                }
                self.epochs.insert(set.clone(), epoch);
            }
        }
        Ok(())
    }

    /// Member `i`'s report (to be numbered and stamped when sent).
    fn report(&self, templates: &Templates, i: usize) -> Envelope<StatusReport> {
        let m = &self.members[i];
        let epoch_of = |set: &ReplicaSetId| self.epochs.get(set).copied();
        let (template, epoch) = match &m.part {
            Part::Standalone => (&templates.standalone, None),
            Part::Master { set, .. } => (&templates.master, epoch_of(set)),
            Part::Replica { set, .. } => (&templates.replica, epoch_of(set)),
        };
        let mut e = template.clone();
        e.sender = Sender::Agent {
            instance: m.id.clone(),
        };
        e.target = m.id.clone();
        let r = &mut e.body;
        r.instance = m.id.clone();
        if let Some(epoch) = epoch {
            e.epoch = epoch;
            r.highest_epoch = epoch;
        }
        match &m.part {
            Part::Standalone => {}
            Part::Master { replicas, .. } => {
                r.replicates_to = replicas.clone();
                r.failsafe = Some(FailsafeState::Master {
                    epoch: epoch.expect("a seeded set"),
                    peers: replicas.clone(),
                    held: 0,
                });
            }
            Part::Replica { master, .. } => {
                r.replicates_from = Some(master.clone());
                r.failsafe = Some(FailsafeState::Replica {
                    master: master.clone(),
                });
            }
        }
        e
    }

    /// Publishes every member's report once a second, spread evenly over the second, on
    /// `connections` connections, until `stop`; returns how many were published.
    pub async fn report_until(
        self: Arc<Self>,
        uri: String,
        templates: Arc<Templates>,
        connections: usize,
        stop: CancellationToken,
    ) -> anyhow::Result<u64> {
        let conductor = PublicKey::from_hex(&tandem_testkit::conductor_key().public_hex)
            .map_err(anyhow::Error::msg)?;
        let mut tasks = Vec::new();
        for c in 0..connections {
            // Each connection's members' reports, made once and stamped at each send.
            let mut mine: Vec<(usize, Envelope<StatusReport>)> = (c..self.len())
                .step_by(connections)
                .map(|i| (i, self.report(&templates, i)))
                .collect();
            let (fleet, uri, stop) = (self.clone(), uri.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let connection = Connection::connect(&uri, ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                let start = tokio::time::Instant::now();
                let period = Duration::from_secs(1);
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                let (mut sent, mut next) = (0u64, 0usize);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    // Member k of round n is due at n s + k/len s.
                    let elapsed = start.elapsed();
                    let due =
                        (elapsed.as_secs_f64() / period.as_secs_f64() * mine.len() as f64) as usize;
                    while next <= due {
                        let count = mine.len();
                        let (i, report) = &mut mine[next % count];
                        let now = Timestamp::now();
                        report.message_id = MessageId::random();
                        report.issued_at = now;
                        report.body.sequence = (next / count) as u64 + 1;
                        report.body.taken_at = now;
                        let (i, report) = (*i, &*report);
                        let bytes = codec::encode(report)?;
                        let headers = status_headers(&fleet.members[i].key, &[conductor], &bytes);
                        let key = status_key(&report.body.zone, &report.body.instance);
                        channel
                            .basic_publish(
                                STATUS_EXCHANGE.into(),
                                key.as_str().into(),
                                BasicPublishOptions::default(),
                                &bytes,
                                status_properties(headers),
                            )
                            .await?;
                        sent += 1;
                        next += 1;
                    }
                }
                let _ = connection.close(200, "done".into()).await;
                anyhow::Ok(sent)
            }));
        }
        let mut sent = 0;
        for t in tasks {
            sent += t.await??;
        }
        Ok(sent)
    }
}

fn public_key(key: &SigningKey) -> PublicKey {
    PublicKey::from_hex(&key.public_hex()).expect("a key's own public key")
}

/// The baseline: a bare lapin consumer of every report, keeping the newest
/// `taken_at` of each instance (decoding each report, checking nothing).
pub struct BareConsumer {
    pub newest: Arc<Mutex<HashMap<InstanceId, Timestamp>>>,
    stop: CancellationToken,
}

impl BareConsumer {
    pub async fn start(uri: &str, bounded: bool) -> anyhow::Result<BareConsumer> {
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        // With `bounded`, the conductor's feed settings (its queue's bound, prefetch and
        // acknowledgements, as `tandem_transport::FeedBound::DEFAULT`), which cost the
        // broker more than a consumer that acknowledges nothing.
        let mut args = FieldTable::default();
        if bounded {
            let bound = tandem_transport::FeedBound::DEFAULT;
            args.insert("x-max-length".into(), AMQPValue::LongUInt(bound.queued));
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("drop-head".into()),
            );
            channel
                .basic_qos(bound.prefetch, Default::default())
                .await?;
        }
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        channel
            .queue_bind(
                queue.name().as_str().into(),
                STATUS_EXCHANGE.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.name().as_str().into(),
                "bare".into(),
                BasicConsumeOptions {
                    no_ack: !bounded,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let newest: Arc<Mutex<HashMap<InstanceId, Timestamp>>> = Default::default();
        let stop = CancellationToken::new();
        tokio::spawn({
            let (newest, stop) = (newest.clone(), stop.clone());
            async move {
                let _connection = connection;
                let mut n = 0u64;
                loop {
                    let delivery = tokio::select! {
                        _ = stop.cancelled() => return,
                        d = consumer.next() => d,
                    };
                    let Some(Ok(delivery)) = delivery else { return };
                    n += 1;
                    if bounded && n.is_multiple_of(500) {
                        let multiple = BasicAckOptions { multiple: true };
                        let _ = channel.basic_ack(delivery.delivery_tag, multiple).await;
                    }
                    if let Ok(e) = codec::decode::<Envelope<StatusReport>>(&delivery.data) {
                        newest
                            .lock()
                            .expect("poisoned")
                            .insert(e.body.instance, e.body.taken_at);
                    }
                }
            }
        });
        Ok(BareConsumer { newest, stop })
    }
}

impl Drop for BareConsumer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
