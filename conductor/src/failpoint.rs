//! Crash points for tests: the conductor exits at a named point of a workflow, so a test
//! can prove that every step survives a conductor crash. Read from the configuration,
//! obeyed by the workflow runner.

use tandem_api::WorkflowKind;

/// A named crash point, for proving that every step survives a conductor crash:
/// `TANDEM_CONDUCTOR_FAILPOINT=<workflow kind>:<step number>:<before|sent|after>`.
/// `before`: journaled, not sent. `sent`: the agent ran it, the reply is not recorded
/// (the hardest case: on resume the same message id goes out again). `after`: recorded.
/// With `:hang` after it, the workflow stops there and the process lives on (holding
/// the store's leadership), for a test to kill or freeze it at a known step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failpoint {
    pub kind: WorkflowKind,
    pub seq: u32,
    pub at: Point,
    pub then: Then,
}

/// What the process does at a failpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Exit,
    Hang,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Before,
    Sent,
    After,
}

impl std::str::FromStr for Failpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (parts, then) = match parts.as_slice() {
            [rest @ .., "hang"] => (rest, Then::Hang),
            all => (all, Then::Exit),
        };
        match parts {
            [kind, seq, when @ ("before" | "sent" | "after")] => Ok(Failpoint {
                then,
                kind: kind.parse().map_err(|e| format!("failpoint kind {e}"))?,
                seq: seq
                    .parse()
                    .map_err(|_| format!("failpoint step {seq:?} is not a number"))?,
                at: match *when {
                    "before" => Point::Before,
                    "sent" => Point::Sent,
                    _ => Point::After,
                },
            }),
            _ => Err(format!(
                "failpoint {s:?} is not <kind>:<step>:<before|sent|after>[:hang]"
            )),
        }
    }
}
