//! The switchover rolls back from a failure at every step before its point of no
//! return, and never leaves two writable servers on the way.

use tandem_api::WorkflowState;
use tandem_proto::ErrorKind;

use super::fake::{healthy, lines, Answer, World};

/// The steps a switchover from db-1 to db-2 sends before and at its point of no return.
const STEPS: &[(&str, &str)] = &[
    ("db-1", "set_read_only"),
    ("db-1", "get_latest_position"),
    ("db-2", "wait_for_position"),
    ("db-2", "get_latest_position"),
    ("db-2", "detach"),
];

#[tokio::test(start_paused = true)]
async fn a_healthy_switchover_promotes_the_candidate_and_demotes_the_old_master() {
    let w = World::new();
    let epoch = w.epoch();
    let row = w.run(w.switchover_to("db-2")).await;
    assert_eq!(row.state, WorkflowState::Done, "{:?}", row.error);
    assert_eq!(w.master(), "db-2");
    assert_eq!(w.epoch(), epoch + 1);
    let sent = w.agents.sent();
    let names: Vec<(&str, &str)> = sent
        .iter()
        .map(|s| (s.target.as_str(), s.name()))
        .take(STEPS.len())
        .collect();
    assert_eq!(names, STEPS, "{}", lines(&sent));
    // Everything after the change carries the new epoch.
    let detach = sent.iter().position(|s| s.is("db-2", "detach")).unwrap();
    assert!(sent[detach..].iter().all(|s| s.epoch.get() == epoch + 1));
    assert!(sent.iter().any(|s| s.is("db-1", "demote")));
}

#[tokio::test(start_paused = true)]
async fn a_failure_at_any_step_before_the_point_of_no_return_rolls_back() {
    for (k, (target, command)) in STEPS.iter().enumerate() {
        let w = World::new();
        let epoch = w.epoch();
        let (target, command) = (target.to_string(), command.to_string());
        w.agents.script(move |s| {
            if s.is(&target, &command) {
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
            "step {k}: {:?}\n{}",
            row.error,
            lines(&sent)
        );
        assert!(row.error.as_deref().unwrap().contains("injected failure"));
        assert_eq!(w.master(), "db-1", "step {k}");
        // The old master is writable again, and that is the last role it was given.
        let roles = ["set_read_only", "set_writable", "demote", "detach"];
        let last_to_old = sent
            .iter()
            .rev()
            .find(|s| s.target.as_str() == "db-1" && roles.contains(&s.name()));
        assert_eq!(
            last_to_old.map(|s| s.name()),
            Some("set_writable"),
            "step {k}:\n{}",
            lines(&sent)
        );
        // The candidate was never left writable.
        assert!(
            !sent.iter().any(|s| s.is("db-2", "set_writable")),
            "step {k}"
        );
        if k < 4 {
            assert_eq!(w.epoch(), epoch, "step {k}: nothing recorded, no new epoch");
            assert!(!sent.iter().any(|s| s.is("db-2", "detach")));
        } else {
            // After the change: a new epoch for the change and one for its undoing,
            // and the candidate confirmed read-only before the old master got writes.
            assert_eq!(w.epoch(), epoch + 2, "step {k}");
            let ro = sent
                .iter()
                .rposition(|s| s.is("db-2", "set_read_only"))
                .expect("the candidate is made read-only");
            let back = sent
                .iter()
                .rposition(|s| s.is("db-1", "set_writable"))
                .unwrap();
            assert!(ro < back, "{}", lines(&sent));
            assert!(sent[ro..].iter().all(|s| s.epoch.get() == epoch + 2));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_candidate_that_does_not_confirm_read_only_keeps_the_old_master_read_only() {
    let w = World::new();
    let mut detached = false;
    w.agents.script(move |s| {
        if s.is("db-2", "detach") {
            detached = true;
            return Answer::fail(ErrorKind::EngineRefused, "injected failure");
        }
        if detached && s.is("db-2", "set_read_only") {
            return Answer::Silent;
        }
        healthy(s)
    });
    let row = w.run(w.switchover_to("db-2")).await;
    let sent = w.agents.sent();
    assert_eq!(row.state, WorkflowState::Failed, "{:?}", row.error);
    assert!(
        row.error
            .as_deref()
            .unwrap()
            .contains("no member is writable"),
        "{:?}",
        row.error
    );
    let detach = sent.iter().position(|s| s.is("db-2", "detach")).unwrap();
    assert!(
        !sent[detach..].iter().any(|s| s.is("db-1", "set_writable")),
        "the old master got writes back while the candidate may be writable:\n{}",
        lines(&sent)
    );
}
