//! How a long operation is bounded: it ends when it is done, when the conductor cancels
//! it, when its time limit passes, or when its bytes stop moving for the stall limit
//! (a child process stopped or stuck, a peer gone quiet). Whatever stops it, the
//! operation's future is dropped at a safe point: its child processes are killed
//! (`kill_on_drop`), its scratch space removed (`Scratch`), and then its own cleanup
//! runs. An operation past its point of no return (installing a prepared copy) is never
//! stopped: it finishes, and says the stop came too late.

use std::future::Future;
use std::time::{Duration, Instant};

use tandem_proto::{CommandError, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::host::mib;
use crate::operations::Progress;

/// How often progress is looked at.
const LOOK: Duration = Duration::from_millis(250);

/// The bounds of one long operation.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The operation must end within this long of its start.
    pub time_limit: Duration,
    /// It fails when no byte moves for this long in a phase that moves bytes.
    pub stall_limit: Duration,
}

/// Why an operation was stopped before it ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Cancelled,
    OutOfTime(Duration),
    Stalled { phase: &'static str, for_: Duration },
}

impl Stop {
    fn error(&self, progress: &Progress) -> CommandError {
        let done = progress.bytes_done();
        let phase = progress.phase().as_str();
        let message = match self {
            Stop::Cancelled => format!(
                "cancelled by the conductor while {phase} ({} moved); nothing was installed \
                 and what it had made was removed",
                mib(done)
            ),
            Stop::OutOfTime(limit) => format!(
                "did not finish within its time limit of {} s (stopped while {phase}, {} \
                 moved); nothing was installed and what it had made was removed",
                limit.as_secs(),
                mib(done)
            ),
            Stop::Stalled { phase, for_ } => format!(
                "no progress for {} s while {phase} ({} moved): a step of the copy is stuck \
                 (a process stopped or hung, a peer gone quiet); stopped, nothing was \
                 installed and what it had made was removed",
                for_.as_secs(),
                mib(done)
            ),
        };
        // Final: the same command sent again would end the same way.
        CommandError::new(ErrorKind::EngineRefused, message)
    }
}

/// Runs `work` within `bounds`, until `cancel`. `Err(stop)` inside the result's error
/// means it was stopped (and dropped); the caller then runs the operation's cleanup.
pub async fn supervise<T>(
    work: impl Future<Output = Result<T, CommandError>>,
    progress: &Progress,
    cancel: &CancellationToken,
    bounds: Bounds,
) -> Result<T, (Option<Stop>, CommandError)> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + bounds.time_limit);
    let mut work = std::pin::pin!(work);
    let mut look = tokio::time::interval(LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_moved = (Instant::now(), progress.bytes_done(), progress.phase());
    let mut refused: Option<Stop> = None;
    loop {
        let stop = tokio::select! {
            result = &mut work => return result.map_err(|e| (None, e)),
            _ = cancel.cancelled(), if refused.is_none() => Stop::Cancelled,
            _ = tokio::time::sleep_until(deadline), if refused.is_none() => {
                Stop::OutOfTime(bounds.time_limit)
            }
            _ = look.tick(), if refused.is_none() => {
                let now = (progress.bytes_done(), progress.phase());
                if now != (last_moved.1, last_moved.2) {
                    last_moved = (Instant::now(), now.0, now.1);
                    continue;
                }
                let quiet = last_moved.0.elapsed();
                if !(now.1.moves_bytes() && quiet >= bounds.stall_limit) {
                    continue;
                }
                Stop::Stalled { phase: now.1.as_str(), for_: quiet }
            }
        };
        if progress.phase().past_no_return() {
            // Installing: stopping now could leave the server without its data. It
            // finishes; the stop is said in the log and the operation's result stands.
            tracing::warn!(
                ?stop,
                "a long command past its point of no return is finished, not stopped"
            );
            refused = Some(stop);
            continue;
        }
        let error = stop.error(progress);
        return Err((Some(stop), error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::Phase;

    fn bounds(time: u64, stall: u64) -> Bounds {
        Bounds {
            time_limit: Duration::from_millis(time),
            stall_limit: Duration::from_millis(stall),
        }
    }

    #[tokio::test]
    async fn work_that_ends_on_its_own_returns_its_result() {
        let p = Progress::default();
        let r = supervise(
            async { Ok(7) },
            &p,
            &CancellationToken::new(),
            bounds(1000, 1000),
        )
        .await;
        assert_eq!(r.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_cancel_stops_the_work_and_says_so() {
        let p = Progress::default();
        p.set_phase(Phase::Copying);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let r: Result<(), _> =
            supervise(std::future::pending(), &p, &cancel, bounds(60_000, 60_000)).await;
        let (stop, e) = r.unwrap_err();
        assert_eq!(stop, Some(Stop::Cancelled));
        assert!(
            e.message
                .contains("cancelled by the conductor while copying"),
            "{e}"
        );
        assert!(!e.retryable);
    }

    #[tokio::test]
    async fn the_time_limit_stops_the_work() {
        let p = Progress::default();
        p.set_phase(Phase::Preparing);
        let r: Result<(), _> = supervise(
            std::future::pending(),
            &p,
            &CancellationToken::new(),
            bounds(300, 100),
        )
        .await;
        let (stop, e) = r.unwrap_err();
        assert!(matches!(stop, Some(Stop::OutOfTime(_))), "{stop:?}");
        assert!(e.message.contains("time limit"), "{e}");
    }

    #[tokio::test]
    async fn bytes_that_stop_moving_stop_the_work_but_a_phase_that_moves_none_does_not() {
        let p = Progress::default();
        p.set_phase(Phase::Unpacking);
        p.add(10);
        let r: Result<(), _> = supervise(
            std::future::pending(),
            &p,
            &CancellationToken::new(),
            bounds(60_000, 600),
        )
        .await;
        let (stop, e) = r.unwrap_err();
        assert!(
            matches!(
                stop,
                Some(Stop::Stalled {
                    phase: "unpacking",
                    ..
                })
            ),
            "{stop:?}"
        );
        assert!(e.message.contains("no progress"), "{e}");

        // Preparing moves no bytes: only the time limit bounds it.
        let p = Progress::default();
        p.set_phase(Phase::Preparing);
        let r = supervise(
            async {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                Ok(1)
            },
            &p,
            &CancellationToken::new(),
            bounds(60_000, 300),
        )
        .await;
        assert_eq!(r.unwrap(), 1);
    }

    #[tokio::test]
    async fn past_the_point_of_no_return_the_work_finishes() {
        let p = Progress::default();
        p.set_phase(Phase::Installing);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let r = supervise(
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok("installed")
            },
            &p,
            &cancel,
            bounds(60_000, 60_000),
        )
        .await;
        assert_eq!(r.unwrap(), "installed");
    }
}
