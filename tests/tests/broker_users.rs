//! One broker identity per agent, least privilege: a deployment where the conductor made
//! each agent a broker user of its own (through the RabbitMQ management API) runs as
//! before, and one agent's credentials (what a tenant with root on its VM finds) reach
//! nothing of another's: not its queue, not the command exchange, not its routing key.
//! Real broker users on the real broker; real agents, engines and conductor.

use tandem_e2e::hostile::Hostile;
use tandem_e2e::{Cluster, ClusterOptions};
use tandem_transport::identity::broker_password;
use tandem_transport::topology::{COMMAND_EXCHANGE, EVENTS_EXCHANGE, STATUS_EXCHANGE};

#[test]
fn each_agent_speaks_as_its_own_broker_user_and_reaches_nothing_of_another() {
    let mut options = ClusterOptions::read_only_at_start();
    options.agent_users = true;
    let c = Cluster::start_with(2, options);
    // Everything works with least-privilege agents: a set, a replica, a ping, a
    // switchover (commands, replies, reports, events).
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.converged("s1");
    c.cli_ok(&["ping", "db-2"]);
    c.cli_ok(&["promote", "s1", "db-2", "--wait"]);
    assert_eq!(c.converged("s1"), "db-2");

    // db-2's credentials, as found on its VM.
    let agent = &c.nodes[1].agent;
    let user = agent
        .setting("TANDEM_AGENT_BROKER__USER")
        .unwrap()
        .to_owned();
    assert_eq!(user, format!("{}db-2", c.broker.user_prefix()));
    let token = agent
        .setting("TANDEM_AGENT_BROKER__ENROLMENT_TOKEN")
        .unwrap();
    let uri = format!(
        "amqp://{user}:{}@127.0.0.1:5672/{}",
        broker_password(token),
        c.broker.vhost()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = Hostile::connect(&uri).await.unwrap();
        // What db-2 may do (so the refusals below are about permissions, not a login).
        h.try_publish(STATUS_EXCHANGE, "zone-a.db-2", b"x")
            .await
            .expect("db-2 publishes its own status key");
        // What it may not.
        let refused = [
            (
                "consume db-1's queue",
                h.try_consume("tandem.agent.db-1").await,
            ),
            (
                "publish a command",
                h.try_publish(COMMAND_EXCHANGE, "db-1", b"x").await,
            ),
            (
                "publish status as db-1",
                h.try_publish(STATUS_EXCHANGE, "zone-a.db-1", b"x").await,
            ),
            (
                "publish an event as db-1",
                h.try_publish(EVENTS_EXCHANGE, "zone-a.db-1", b"x").await,
            ),
            ("declare a queue", h.try_declare_queue().await.map(drop)),
            (
                "bind its own queue to db-1's commands",
                h.try_bind("tandem.agent.db-2", COMMAND_EXCHANGE, "db-1")
                    .await,
            ),
            (
                "bind db-1's queue to the status exchange",
                h.try_bind("tandem.agent.db-1", STATUS_EXCHANGE, "#").await,
            ),
        ];
        for (what, result) in refused {
            let e = result.expect_err(what);
            assert!(
                e.to_string().contains("ACCESS_REFUSED") || e.to_string().contains("403"),
                "{what}: {e}"
            );
        }
    });
}
