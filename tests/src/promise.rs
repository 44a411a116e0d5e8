//! The replica-set helpers every promise test shares: a three-server set under load,
//! and the assertions of "never two writable" and "nothing acknowledged lost", made
//! from the writer's and the observer's records (never from logs).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tandem_api::{FailoverSummary, JournalEntry, MemberView, SetView, WorkflowKind, WorkflowRow};

use crate::load::{self, Ack};
use crate::{eventually, tail, Cluster, ClusterOptions};

/// Three servers that start read-only (as with the agent's managed configuration), a
/// set s1 with db-1 as master and db-2, db-3 as replicas, the `app` user and table.
pub fn three(semi_sync: bool, options: ClusterOptions) -> Cluster {
    let c = Cluster::start_with(3, options);
    let mut create = vec!["set", "create", "s1", "--master", "db-1", "--wait"];
    if semi_sync {
        create.push("--semi-sync");
    }
    c.cli_ok(&create);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-3", "--wait"]);
    c.converged("s1");
    load::prepare(c.db("db-1"));
    c.read_only_binds("'admin'@'%'");
    c.write_and_see_everywhere("s1", "db-1", 1);
    c
}

pub fn member<'a>(view: &'a SetView, name: &str) -> &'a MemberView {
    view.member(name)
        .unwrap_or_else(|| panic!("{name} is not a member of {}", view.id))
}

/// Waits until the set's master is not `old`; returns the new master.
pub fn failed_over(c: &Cluster, old: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let v = c.set("s1");
        if v.master.as_str() != old {
            return v.master.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no failover away from {old} within {limit:?}; set: {v:?}\naudit:\n{}\nconductor log:\n{}",
            tail(&c.cli(&["audit"]).1, 20),
            tail(&c.conductor.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn assert_never_two_writable(samples: &[(Instant, Vec<bool>)]) {
    assert!(samples.len() > 20, "the observer barely ran");
    for (i, (_, writable)) in samples.iter().enumerate() {
        let n = writable.iter().filter(|w| **w).count();
        assert!(
            n <= 1,
            "sample {i}: {n} servers accepted writes at once: {writable:?}"
        );
    }
}

pub fn ids_on(c: &Cluster, name: &str) -> HashSet<u64> {
    c.db(name)
        .sql("SELECT id FROM app.w")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

pub fn assert_all_acknowledged_on(c: &Cluster, name: &str, acked: &[Ack]) {
    let present = ids_on(c, name);
    let missing: Vec<&Ack> = acked.iter().filter(|a| !present.contains(&a.id)).collect();
    if missing.is_empty() {
        return;
    }
    // Which server acknowledged each, and when (from the first acknowledgement), and
    // where the failovers stood: what a person needs to tell a loss from a test's slip.
    let first = acked.first().map(|a| a.at).expect("rows were acknowledged");
    let said: Vec<String> = missing
        .iter()
        .map(|a| {
            format!(
                "{} (by server {} at +{} ms)",
                a.id,
                a.server,
                a.at.duration_since(first).as_millis()
            )
        })
        .collect();
    // Each server's semi-sync counters: commits acknowledged with and without a
    // replica's word.
    let semi_sync: Vec<String> = c
        .nodes
        .iter()
        .map(|n| {
            let counters = c
                .db(&n.name)
                .sql(
                    "SELECT GROUP_CONCAT(CONCAT(VARIABLE_NAME, '=', VARIABLE_VALUE)) FROM \
                     information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME IN \
                     ('RPL_SEMI_SYNC_MASTER_STATUS', 'RPL_SEMI_SYNC_MASTER_YES_TX', \
                     'RPL_SEMI_SYNC_MASTER_NO_TX', 'RPL_SEMI_SYNC_MASTER_NO_TIMES')",
                )
                .unwrap_or_else(|e| e.to_string());
            format!("{}: {counters}", n.name)
        })
        .collect();
    panic!(
        "{} of {} acknowledged rows are not on {name}: {}\nsemi-sync: {}\naudit:\n{}\n{}",
        missing.len(),
        acked.len(),
        said.join(", "),
        semi_sync.join("; "),
        tail(&c.cli(&["audit"]).1, 40),
        c.node_logs()
    );
}

/// The summary the first failover journaled (the audit log's record of it), once the
/// workflow has written it.
pub fn failover_summary(c: &Cluster) -> FailoverSummary {
    eventually(Duration::from_secs(20), "the failover summary", || {
        let entries: Vec<JournalEntry> = c.cli_json(&["audit"]);
        entries
            .into_iter()
            .filter(|e| e.is_note() && e.step == FailoverSummary::STEP)
            .filter_map(|e| e.result)
            .next_back()
            .map(|r| serde_json::from_value(r).expect("a failover summary"))
    })
}

/// The workflows of `kind` the conductor has run or is running.
pub fn workflows_of_kind(c: &Cluster, kind: WorkflowKind) -> Vec<WorkflowRow> {
    let all: Vec<WorkflowRow> = c.cli_json(&["workflow", "list"]);
    all.into_iter().filter(|w| w.kind == kind).collect()
}

/// Waits for workflow `id` to end, and checks that it ended done with every step
/// journaled once and the epochs never falling.
pub fn done_once(c: &Cluster, id: &str) -> tandem_api::WorkflowDetail {
    let w = eventually(Duration::from_secs(60), "the workflow to end", || {
        let w = c.api().workflow(id).ok()?;
        (!matches!(
            w.workflow.state,
            tandem_api::WorkflowState::Running | tandem_api::WorkflowState::RollingBack
        ))
        .then_some(w)
    });
    assert_eq!(
        w.workflow.state,
        tandem_api::WorkflowState::Done,
        "{:?}\n{}",
        w.workflow.error,
        tail(&c.conductor.log(), 40)
    );
    let seqs: Vec<u32> = w.steps.iter().map(|s| s.seq).collect();
    let mut unique = seqs.clone();
    unique.dedup();
    assert_eq!(seqs, unique, "a step journaled twice");
    assert!(
        w.steps.windows(2).all(|p| p[0].epoch <= p[1].epoch),
        "epochs fell: {:?}",
        w.steps.iter().map(|s| (s.seq, s.epoch)).collect::<Vec<_>>()
    );
    w
}

/// The newest workflow of `kind` (waiting briefly for one).
pub fn newest(c: &Cluster, kind: WorkflowKind) -> String {
    eventually(Duration::from_secs(10), "the workflow", || {
        c.api()
            .workflows()
            .ok()?
            .into_iter()
            .find(|w| w.kind == kind)
            .map(|w| w.id)
    })
}
