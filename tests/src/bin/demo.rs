//! The local demo: a broker vhost, three private MariaDB instances with their agents, the
//! conductor; a replica set of one master and two replicas; rows written and replicated;
//! the master's engine killed and a replica promoted.
//!
//! Until the conductor's workflows land (issue 5), this program drives the agents itself,
//! with the same commands the conductor will send, and shows each step through the
//! `tandem` CLI. Run it with `scripts/demo`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tandem_proto::{
    Command, Envelope, Epoch, InstanceId, ReplicationCredentials, ReplyBody, Sender, SourceEndpoint,
};
use tandem_testkit::{binary, AgentProcess, Broker, ConductorProcess, MariaDb, MariaDbOptions};
use tandem_transport::{Transport, TransportConfig};
use tokio_util::sync::CancellationToken;

struct Demo {
    dbs: Vec<(String, MariaDb)>,
    client: Transport,
    conductor: ConductorProcess,
}

impl Demo {
    fn db(&self, name: &str) -> &MariaDb {
        &self.dbs.iter().find(|(n, _)| n == name).unwrap().1
    }

    async fn cmd(&self, target: &str, epoch: u64, body: Command) -> Result<ReplyBody> {
        let env = Envelope::new(
            Sender::Conductor {
                name: "demo".into(),
            },
            InstanceId::new(target)?,
            Epoch::new(epoch),
            body,
        )
        .expires_in(Duration::from_secs(30));
        let what = format!("{} on {target}", env.body.name());
        let reply = self.client.call(&env, Duration::from_secs(30)).await?;
        reply.body.into_result().with_context(|| what)
    }

    fn db_mut(&mut self, name: &str) -> &mut MariaDb {
        &mut self.dbs.iter_mut().find(|(n, _)| n == name).unwrap().1
    }

    fn endpoint(&self, name: &str) -> SourceEndpoint {
        SourceEndpoint {
            instance: InstanceId::new(name).unwrap(),
            host: "127.0.0.1".into(),
            port: self.db(name).port(),
        }
    }

    async fn attach(&self, master: &str, replica: &str, epoch: u64) -> Result<()> {
        let credentials: ReplicationCredentials = match self
            .cmd(
                master,
                epoch,
                Command::CreateReplicationUser {
                    replica: InstanceId::new(replica)?,
                },
            )
            .await?
        {
            ReplyBody::Credentials { credentials } => credentials,
            other => anyhow::bail!("unexpected {other:?}"),
        };
        self.cmd(
            replica,
            epoch,
            Command::AttachToSource {
                source: self.endpoint(master),
                credentials,
                position: None,
            },
        )
        .await?;
        Ok(())
    }

    fn show(&self, title: &str) {
        println!("\n== {title}\n$ tandem status");
        let (_, out, err) = self.conductor.cli(&["status"]);
        print!("{out}{err}");
    }
}

fn step(text: &str) {
    println!("\n-- {text}");
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !f() {
        anyhow::ensure!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let names = ["db-1", "db-2", "db-3"];
    step(
        "starting a RabbitMQ virtual host, three MariaDB instances, three agents and the conductor",
    );
    let broker = Broker::new()?;
    let mut dbs = Vec::new();
    let mut agents = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let db = MariaDb::start(MariaDbOptions {
            server_id: tandem_agent::server_id_for(&InstanceId::new(*name)?),
            ..Default::default()
        })?;
        println!("   {name}: mariadbd on 127.0.0.1:{}", db.port());
        let zone = if i == 0 { "zone-a" } else { "zone-b" };
        agents.push(AgentProcess::start_mariadb(
            &binary("tandem-agent"),
            name,
            zone,
            broker.uri(),
            &db,
        )?);
        dbs.push((name.to_string(), db));
    }
    let conductor = ConductorProcess::start(broker.uri())?;
    println!("   conductor API on {}", conductor.url);
    let shutdown = CancellationToken::new();
    let client =
        Transport::connect(TransportConfig::new(broker.uri(), "demo"), shutdown.clone()).await?;
    let mut demo = Demo {
        dbs,
        client,
        conductor,
    };
    wait_until(Duration::from_secs(30), || {
        let (_, out, _) = demo.conductor.cli(&["status"]);
        names.iter().all(|n| out.contains(n))
    })
    .await?;
    demo.show("three standalone servers reported by their agents");

    step("replica set (epoch 1): db-1 master, db-2 and db-3 read-only replicas");
    demo.cmd("db-1", 1, Command::EnableAsMaster).await?;
    demo.cmd("db-1", 1, Command::SetWritable).await?;
    for r in ["db-2", "db-3"] {
        demo.cmd(r, 1, Command::SetReadOnly).await?;
        demo.attach("db-1", r, 1).await?;
    }
    demo.db("db-1").sql(
        "CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY, item TEXT); \
         INSERT INTO shop.orders VALUES (1,'tea'),(2,'cake'),(3,'jam')",
    )?;
    println!("   wrote 3 rows on db-1");
    wait_until(Duration::from_secs(15), || {
        ["db-2", "db-3"].iter().all(|r| {
            demo.db(r)
                .sql("SELECT count(*) FROM shop.orders")
                .ok()
                .as_deref()
                == Some("3")
        })
    })
    .await?;
    println!("   both replicas hold the 3 rows");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    demo.show("the replica set");

    step("failover: kill -9 the master's engine");
    demo.db_mut("db-1").kill();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    demo.show("db-1's agent reports its engine down");

    step("promote db-2 (epoch 2): detach it (it becomes writable), re-point db-3 to it");
    demo.cmd("db-2", 2, Command::Detach).await?;
    demo.cmd("db-2", 2, Command::EnableAsMaster).await?;
    demo.attach("db-2", "db-3", 2).await?;
    demo.db("db-2")
        .sql("INSERT INTO shop.orders VALUES (4,'scones')")?;
    wait_until(Duration::from_secs(15), || {
        demo.db("db-3")
            .sql("SELECT count(*) FROM shop.orders")
            .ok()
            .as_deref()
            == Some("4")
    })
    .await?;
    println!("   row 4 written on db-2 reached db-3");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    demo.show("after the failover");

    step("a command from before the failover (epoch 1) is fenced");
    match demo.cmd("db-2", 1, Command::SetReadOnly).await {
        Err(e) => println!("   refused: {e:#}"),
        Ok(_) => anyhow::bail!("a stale command was obeyed"),
    }
    println!("\ndemo finished; everything it started is stopped and removed now");
    shutdown.cancel();
    drop(agents);
    Ok(())
}
