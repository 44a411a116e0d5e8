//! A broker outage is not a write outage, and never a split brain: while the broker
//! is down a master keeps writing on its replicas' failsafe promises, and a master that
//! is also cut from its replicas loses them and fences itself before anyone can be
//! promoted. Three real MariaDB servers, each on a host of its own (network
//! namespaces), the real broker (this test's virtual host refusing every connection),
//! the writer and an observer that samples every 10 ms as an ordinary and as a
//! privileged account.

use std::time::{Duration, Instant};

use tandem_e2e::load::{Ack, Observer, Writer};
use tandem_e2e::promise::{
    assert_all_acknowledged_on, assert_never_two_writable, failed_over, member, three,
};
use tandem_e2e::{eventually, Cluster, ClusterOptions};
use tandem_proto::FailsafeState;

const OUTAGE: Duration = Duration::from_secs(12);

fn isolated() -> ClusterOptions {
    let mut options = ClusterOptions::read_only_at_start();
    options.isolated = vec!["db-1".into(), "db-2".into(), "db-3".into()];
    options
}

/// Waits until the master holds the failsafe list of both replicas and each replica
/// answers it; returns the master.
fn failsafe_armed(c: &Cluster) -> String {
    let master = c.converged("s1");
    eventually(Duration::from_secs(20), "the failsafe assigned", || {
        let view = c.set("s1");
        let m = member(&view, &master);
        let Some(FailsafeState::Master { peers, .. }) = &m.failsafe else {
            return None;
        };
        let peers = peers.len();
        let replicas_answer = view
            .members
            .iter()
            .filter(|r| r.instance.as_str() != master.as_str())
            .all(|r| {
                matches!(&r.failsafe, Some(FailsafeState::Replica { master: of }) if of.as_str() == master)
            });
        (peers == 2 && replicas_answer).then_some(())
    });
    master
}

/// The set with its failsafe armed, the writer and the observer running: the cluster,
/// the master and its index.
fn armed_under_load() -> (Cluster, String, usize, Observer, Writer) {
    let c = three(true, isolated());
    let master = failsafe_armed(&c);
    let index = c.nodes.iter().position(|n| n.name == master).unwrap();
    let observer = Observer::every(c.addresses(), Duration::from_millis(10));
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_secs(1));
    (c, master, index, observer, writer)
}

/// The longest time between two acknowledged writes within `[from, to]`.
fn longest_gap(acked: &[Ack], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = acked
        .iter()
        .map(|a| a.at)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort();
    let mut edges = vec![from];
    edges.extend(times);
    edges.push(to);
    edges
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

#[test]
fn a_broker_outage_with_every_replica_connected_is_no_write_outage() {
    let (c, master, index, observer, writer) = armed_under_load();

    let down = Instant::now();
    c.broker.outage().unwrap();
    std::thread::sleep(OUTAGE);
    let up = Instant::now();
    c.broker.restore().unwrap();
    // The master reports again (a report from after the outage: it says how often
    // promises held its lease), and nothing failed over.
    let held = eventually(Duration::from_secs(30), "the master heard again", || {
        let held = match member(&c.set("s1"), &master).failsafe {
            Some(FailsafeState::Master { held, .. }) => held,
            _ => return None,
        };
        (held > 0).then_some(held)
    });
    assert_eq!(
        c.converged("s1"),
        master,
        "a broker outage failed the master over"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (_, acked) = writer.finish();
    let samples = observer.finish();

    let on_master: Vec<Ack> = acked
        .iter()
        .filter(|a| a.server == index)
        .copied()
        .collect();
    let gap = longest_gap(&on_master, down, up);
    let writable_in_outage = samples
        .iter()
        .filter(|(at, _)| *at >= down && *at <= up)
        .filter(|(_, w)| w[index])
        .count();
    let sampled_in_outage = samples
        .iter()
        .filter(|(at, _)| *at >= down && *at <= up)
        .count();
    eprintln!(
        "{} s broker outage: {} writes acknowledged by {master} in it, longest gap {} ms, \
         writable in {writable_in_outage} of {sampled_in_outage} samples, lease held by \
         promises {held} times",
        OUTAGE.as_secs(),
        on_master
            .iter()
            .filter(|a| a.at >= down && a.at <= up)
            .count(),
        gap.as_millis()
    );
    // A fenced master would stop acknowledging for the rest of the outage.
    assert!(
        gap < Duration::from_secs(1),
        "the master stopped acknowledging writes for {} ms during the broker outage\n{}",
        gap.as_millis(),
        c.node_logs()
    );
    assert_never_two_writable(&samples);
    assert_all_acknowledged_on(&c, &master, &acked);
}

#[test]
fn a_broker_outage_with_the_master_cut_from_its_replicas_fences_it_before_any_promotion() {
    let (c, old, old_index, observer, writer) = armed_under_load();

    // The broker goes down, and the master's host loses its replicas and the broker
    // (both ways), while clients still reach it.
    let down = Instant::now();
    c.broker.outage().unwrap();
    let old_host = c.nodes[old_index].host.as_ref().unwrap();
    let broker_at = c.network.as_ref().unwrap().0.ip.clone();
    old_host.unroute(&broker_at).unwrap();
    for n in c.nodes.iter().filter(|n| n.name != old) {
        let h = n.host.as_ref().unwrap();
        old_host.unroute(&h.ip).unwrap();
        h.unroute(&old_host.ip).unwrap();
    }
    let fenced = eventually(
        Duration::from_secs(10),
        "the cut-off master read-only",
        || (c.db(&old).sql("SELECT @@read_only").ok()? == "1").then(Instant::now),
    );
    eprintln!(
        "{old} fenced itself {} ms after the broker went down and it lost its replicas",
        (fenced - down).as_millis()
    );
    // Held down for a while: it must stay fenced without broker or replicas.
    std::thread::sleep(OUTAGE.saturating_sub(fenced - down));
    assert_eq!(c.db(&old).sql("SELECT @@read_only").unwrap(), "1");

    // The broker is back for everyone but the old master: its replicas report its
    // loss and one of them is promoted.
    c.broker.restore().unwrap();
    let new = failed_over(&c, &old, Duration::from_secs(40));
    let new_index = c.nodes.iter().position(|n| n.name == new).unwrap();
    let first = eventually(Duration::from_secs(15), "a write on the new master", || {
        writer.first_ack_on_after(new_index, down)
    });
    std::thread::sleep(Duration::from_millis(500));
    let (_, acked) = writer.finish();
    let samples = observer.finish();

    // Every sample in which the old master accepted a write came before the first in
    // which the new one did.
    let last_old = samples
        .iter()
        .filter(|(_, w)| w[old_index])
        .map(|(at, _)| *at)
        .max()
        .expect("the old master was writable before the outage");
    let first_new = samples
        .iter()
        .filter(|(_, w)| w[new_index])
        .map(|(at, _)| *at)
        .min()
        .expect("the new master became writable");
    eprintln!(
        "old master last writable {} ms after the outage began, new master first writable \
         {} ms after it, first write on it {} ms after it",
        last_old.saturating_duration_since(down).as_millis(),
        first_new.saturating_duration_since(down).as_millis(),
        first.at.saturating_duration_since(down).as_millis()
    );
    eprintln!(
        "{old}'s semi-sync: {}",
        c.db(&old)
            .sql(
                "SELECT GROUP_CONCAT(CONCAT(VARIABLE_NAME, '=', VARIABLE_VALUE)) FROM \
                 information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME LIKE 'RPL_SEMI_SYNC_MASTER%'"
            )
            .unwrap_or_default()
    );
    assert!(
        last_old < first_new,
        "{old} was still writable after {new} became writable"
    );
    assert_never_two_writable(&samples);
    assert_all_acknowledged_on(&c, &new, &acked);
}
