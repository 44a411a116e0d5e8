//! A pair switch: two round trips while writes are stopped with agents that speak
//! protocol v5, the switchover's steps with older ones, and, when the passive side
//! refuses to take the writes, undone under a newer epoch without two writable sides.

use tandem_api::WorkflowState;
use tandem_proto::{ErrorKind, ProtocolVersion, VersionRange};

use super::fake::{healthy, lines, Answer, World};

fn pair() -> World {
    let w = World::new();
    w.pair();
    w
}

#[tokio::test(start_paused = true)]
async fn a_pair_switch_stops_writes_then_hands_them_over_under_the_new_epoch() {
    let w = pair();
    let epoch = w.epoch();
    let row = w.run(w.switchover_to("db-2")).await;
    assert_eq!(row.state, WorkflowState::Done, "{:?}", row.error);
    assert_eq!(w.master(), "db-2");
    assert_eq!(w.epoch(), epoch + 1);
    let sent = w.agents.sent();
    let names: Vec<(&str, &str, u64)> = sent
        .iter()
        .map(|s| (s.target.as_str(), s.name(), s.epoch.get()))
        .take(3)
        .collect();
    assert_eq!(
        names,
        [
            ("db-2", "get_latest_position", epoch),
            ("db-1", "stop_writes", epoch),
            ("db-2", "take_over_writes", epoch + 1),
        ],
        "{}",
        lines(&sent)
    );
    // Nothing of the step-by-step switch, and the old side keeps its channel.
    for old_step in [
        "set_read_only",
        "wait_for_position",
        "set_writable",
        "detach",
    ] {
        assert!(
            !sent
                .iter()
                .any(|s| s.name() == old_step && s.target.as_str() != "db-3"),
            "{old_step}:\n{}",
            lines(&sent)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn agents_older_than_v5_are_switched_step_by_step() {
    let w = pair();
    w.report("db-2", |r| {
        r.protocol = VersionRange {
            min: ProtocolVersion::V1,
            max: ProtocolVersion::V4,
        }
    });
    let row = w.run(w.switchover_to("db-2")).await;
    assert_eq!(row.state, WorkflowState::Done, "{:?}", row.error);
    let sent = w.agents.sent();
    assert!(!sent
        .iter()
        .any(|s| s.name() == "stop_writes" || s.name() == "take_over_writes"));
    let ro = sent
        .iter()
        .position(|s| s.is("db-1", "set_read_only"))
        .unwrap();
    let writable = sent
        .iter()
        .position(|s| s.is("db-2", "set_writable"))
        .unwrap();
    assert!(ro < writable, "{}", lines(&sent));
}

#[tokio::test(start_paused = true)]
async fn a_failed_stop_writes_leaves_the_active_side_writable_at_the_same_epoch() {
    let w = pair();
    let epoch = w.epoch();
    w.agents.script(|s| {
        if s.is("db-1", "stop_writes") {
            Answer::fail(ErrorKind::EngineRefused, "injected failure")
        } else {
            healthy(s)
        }
    });
    let row = w.run(w.switchover_to("db-2")).await;
    let sent = w.agents.sent();
    assert_eq!(
        row.state,
        WorkflowState::RolledBack,
        "{:?}\n{}",
        row.error,
        lines(&sent)
    );
    assert_eq!((w.master().as_str(), w.epoch()), ("db-1", epoch));
    assert_eq!(
        sent.last().map(|s| (s.target.as_str(), s.name())),
        Some(("db-1", "set_writable"))
    );
    assert!(!sent
        .iter()
        .any(|s| s.target.as_str() == "db-2" && s.name() == "take_over_writes"));
}

#[tokio::test(start_paused = true)]
async fn a_refused_take_over_is_undone_candidate_read_only_first() {
    let w = pair();
    let epoch = w.epoch();
    w.agents.script(|s| {
        if s.is("db-2", "take_over_writes") {
            Answer::fail(ErrorKind::Diverged, "errant: db-2 holds 2-2-1")
        } else {
            healthy(s)
        }
    });
    let row = w.run(w.switchover_to("db-2")).await;
    let sent = w.agents.sent();
    assert_eq!(
        row.state,
        WorkflowState::RolledBack,
        "{:?}\n{}",
        row.error,
        lines(&sent)
    );
    let error = row.error.unwrap();
    assert!(error.contains("errant: db-2 holds 2-2-1"), "{error}");
    // The switch was recorded (epoch + 1) and undone (epoch + 2).
    assert_eq!((w.master().as_str(), w.epoch()), ("db-1", epoch + 2));
    let ro = sent
        .iter()
        .rposition(|s| s.is("db-2", "set_read_only"))
        .unwrap();
    let back = sent
        .iter()
        .rposition(|s| s.is("db-1", "set_writable"))
        .unwrap();
    assert!(ro < back, "{}", lines(&sent));
    assert!(sent[ro..=back].iter().all(|s| s.epoch.get() == epoch + 2));
}

#[tokio::test(start_paused = true)]
async fn a_candidate_that_does_not_confirm_read_only_leaves_no_side_writable() {
    let w = pair();
    w.agents.script(|s| {
        if s.is("db-2", "take_over_writes") {
            Answer::fail(ErrorKind::TimedOut, "injected failure")
        } else if s.is("db-2", "set_read_only") {
            Answer::Silent
        } else {
            healthy(s)
        }
    });
    let row = w.run(w.switchover_to("db-2")).await;
    let sent = w.agents.sent();
    assert_eq!(
        row.state,
        WorkflowState::Failed,
        "{:?}\n{}",
        row.error,
        lines(&sent)
    );
    let error = row.error.unwrap();
    assert!(
        error.contains("no member is writable until an operator looks"),
        "{error}"
    );
    let stopped = sent
        .iter()
        .position(|s| s.is("db-1", "stop_writes"))
        .unwrap();
    assert!(
        !sent[stopped..].iter().any(|s| s.is("db-1", "set_writable")),
        "{}",
        lines(&sent)
    );
}
