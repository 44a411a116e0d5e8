//! The broker as a RabbitMQ cluster of three nodes of the test's own (separate node
//! names, ports and data directories on this machine): the agents connect to one node,
//! the conductor to another, each knowing all three, the agents' command queues quorum
//! queues. A node killed (SIGKILL of its Erlang VM) in the middle of a switchover, or
//! with the master's engine in a failover, loses no acknowledged write, leaves never
//! two writable, and every workflow step runs once. Asserted from a writer's and an
//! observer's records and the store's journal.

use std::time::{Duration, Instant};

use tandem_e2e::load::{Observer, Writer};
use tandem_e2e::promise::{
    assert_all_acknowledged_on, assert_never_two_writable, done_once, failed_over, newest, three,
};
use tandem_e2e::{eventually, ClusterOptions};
use tandem_testkit::BrokerCluster;

/// Agents on node 1, the conductor on node 0, every side knowing every node.
fn on(rabbit: &BrokerCluster) -> ClusterOptions {
    let list = |v: Vec<String>| format!("{v:?}");
    let mut agent = rabbit.uris_from(1);
    let agent_first = agent.remove(0);
    let mut conductor = rabbit.uris_from(0);
    let conductor_first = conductor.remove(0);
    ClusterOptions {
        agent_env: vec![
            ("TANDEM_AGENT_BROKER__URI".into(), agent_first),
            ("TANDEM_AGENT_BROKER__OTHER_URIS".into(), list(agent)),
            ("TANDEM_AGENT_BROKER__QUEUE_TYPE".into(), "quorum".into()),
        ],
        conductor_env: vec![
            ("TANDEM_CONDUCTOR_BROKER_URI".into(), conductor_first),
            ("TANDEM_CONDUCTOR_BROKER_OTHER_URIS".into(), list(conductor)),
            ("TANDEM_CONDUCTOR_AGENT_QUEUE_TYPE".into(), "quorum".into()),
        ],
        ..ClusterOptions::read_only_at_start()
    }
}

#[test]
fn a_broker_node_killed_during_switchovers_loses_no_write_and_runs_every_step_once() {
    let mut rabbit = BrokerCluster::start(3).unwrap();
    let c = three(true, on(&rabbit));
    let observer = Observer::start(c.addresses());
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));

    // The conductor's node, as the switchover starts.
    c.cli_ok(&["promote", "s1", "db-2"]);
    rabbit.kill(0);
    let first = newest(&c, tandem_api::WorkflowKind::Switchover);
    done_once(&c, &first);
    assert_eq!(c.converged("s1"), "db-2");

    // The agents' node (where their quorum queues were made), back the other way.
    rabbit.restart(0).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.cli_ok(&["promote", "s1", "db-1"]);
    rabbit.kill(1);
    let second = eventually(Duration::from_secs(10), "the second switchover", || {
        let id = newest(&c, tandem_api::WorkflowKind::Switchover);
        (id != first).then_some(id)
    });
    done_once(&c, &second);
    assert_eq!(c.converged("s1"), "db-1");

    std::thread::sleep(Duration::from_millis(500));
    let (_, acked) = writer.finish();
    let samples = observer.finish();
    assert_never_two_writable(&samples);
    assert_all_acknowledged_on(&c, "db-1", &acked);
    assert!(acked.len() > 100, "the writer wrote almost nothing");
    c.write_and_see_everywhere("s1", "db-1", 2);
}

#[test]
fn a_broker_node_killed_with_the_master_is_failed_over_with_nothing_lost() {
    let mut rabbit = BrokerCluster::start(3).unwrap();
    let mut c = three(true, on(&rabbit));
    let observer = Observer::start(c.addresses());
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));

    // The master's engine and the agents' node at once.
    let crash = Instant::now();
    c.node_mut("db-1").db.kill();
    rabbit.kill(1);
    let master = failed_over(&c, "db-1", Duration::from_secs(30));
    let failover = newest(&c, tandem_api::WorkflowKind::Failover);
    done_once(&c, &failover);
    eventually(Duration::from_secs(10), "a write on the new master", || {
        writer.first_ack_after(crash)
    });
    std::thread::sleep(Duration::from_millis(500));
    let (_, acked) = writer.finish();
    let samples = observer.finish();
    assert_never_two_writable(&samples);
    assert_all_acknowledged_on(&c, &master, &acked);
    c.converged_without("s1", "db-1");
}
