//! A workflow resumed after the conductor died mid-step sends the step in flight again
//! with the same message id (the agent answers a repeat from its record), and sends
//! nothing that already has a recorded result.

use tandem_api::WorkflowState;

use super::fake::{healthy, lines, Answer, World};

#[tokio::test(start_paused = true)]
async fn a_resumed_switchover_resends_the_step_in_flight_with_its_message_id() {
    let w = World::new();
    w.agents.script(|s| {
        if s.is("db-2", "wait_for_position") {
            Answer::Hang
        } else {
            healthy(s)
        }
    });
    let row = w.start(w.switchover_to("db-2"));
    let running = tokio::spawn(crate::workflow::run(w.c.clone(), row.clone()));
    while !w
        .agents
        .sent()
        .iter()
        .any(|s| s.is("db-2", "wait_for_position"))
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The conductor dies here: the step is journaled, sent, unanswered.
    running.abort();
    let _ = running.await;
    let before = w.agents.sent();
    let in_flight = before.last().unwrap().clone();

    w.agents.script(healthy);
    crate::workflow::run(w.c.clone(), row.clone()).await;
    let all = w.agents.sent();
    let after = &all[before.len()..];
    let row = w.c.store.workflow(&row.id).unwrap().unwrap();
    assert_eq!(row.state, WorkflowState::Done, "{:?}", row.error);
    assert!(
        after[0].is("db-2", "wait_for_position") && after[0].message_id == in_flight.message_id,
        "the step in flight goes out again with the same id:\n{}",
        lines(after)
    );
    // The steps answered before the crash were not sent again.
    for done in &before[..before.len() - 1] {
        assert!(
            !after.iter().any(|s| s.message_id == done.message_id),
            "{} {} sent again",
            done.target,
            done.name()
        );
    }
    assert_eq!(w.master(), "db-2");
}
