//! The status intake, between the broker and the report processing: bounded, and
//! honest about falling behind.
//!
//! Only an instance's newest report matters (each one says everything about it), so a
//! report still waiting when a newer one of the same instance arrives is replaced,
//! never the other way round: what waits is at most one report per instance, however
//! far behind processing falls, and the broker never piles up a backlog for the
//! conductor. Reports are offered only after their sender was checked: a forged
//! report must never push out a genuine one.
//!
//! How long the report being processed waited (counted from the first of its
//! instance's reports still unprocessed, so replacing it does not hide the wait) is
//! the intake's lag, shown by `GET /v1/health`; past a report period the conductor is
//! behind the failures it watches for, and says so in an event.
//!
//! A conductor whose receiving falls behind (not only its processing) leaves reports
//! waiting in the broker, where this process cannot see them by what it receives: the
//! transport asks the broker how many wait, once a second (the backlog), and a
//! backlog of a report period's worth (one report per instance) is falling behind too.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tandem_proto::{InstanceId, StatusReport};
use tokio::sync::Notify;

/// A lag this long is falling behind: agents report once a second.
pub const LAGGING: Duration = Duration::from_secs(1);
/// Back under this, the intake has caught up (apart from [`LAGGING`], so that a lag
/// hovering near it is not an event a second).
pub const CAUGHT_UP: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Waiting {
    /// Each instance's newest report, and when its oldest unprocessed one arrived.
    newest: HashMap<InstanceId, (StatusReport, Instant)>,
    /// Instances in the order their waiting began.
    order: VecDeque<InstanceId>,
}

#[derive(Default)]
pub struct Intake {
    waiting: Mutex<Waiting>,
    ready: Notify,
    replaced: AtomicU64,
    lag_ms: AtomicU64,
    lagging: AtomicBool,
    /// Reports waiting in the broker, and how many arrive in a report period (one per
    /// instance), at the last asking.
    backlog: AtomicU64,
    period: AtomicU64,
}

/// What the intake shows of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakeState {
    /// How long the last report taken had waited.
    pub lag: Duration,
    /// Reports waiting (at most one per instance).
    pub waiting: usize,
    /// Reports replaced by a newer one of their instance before being processed.
    pub replaced: u64,
    /// Reports waiting in the broker, not yet received (asked once a second).
    pub backlog: u64,
}

/// A change of the intake's standing, to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    FellBehind,
    CaughtUp,
}

impl Intake {
    /// Queues `report` (from a checked sender), replacing an older waiting report of
    /// the same instance.
    pub fn offer(&self, report: StatusReport) {
        let mut w = self.waiting.lock().expect("poisoned");
        let id = report.instance.clone();
        match w.newest.get_mut(&id) {
            Some(waiting) => {
                waiting.0 = report;
                self.replaced.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                w.newest.insert(id.clone(), (report, Instant::now()));
                w.order.push_back(id);
                self.ready.notify_one();
            }
        }
    }

    /// The report that waited longest, when there is one.
    pub fn try_take(&self) -> Option<(StatusReport, Option<Standing>)> {
        let mut w = self.waiting.lock().expect("poisoned");
        let id = w.order.pop_front()?;
        let (report, since) = w.newest.remove(&id).expect("ordered means waiting");
        drop(w);
        let lag = since.elapsed();
        self.lag_ms.store(lag.as_millis() as u64, Ordering::Relaxed);
        Some((report, self.judged()))
    }

    /// Records what waits in the broker (`None`: not known yet) with how many
    /// instances report, once a report period; returns the change of standing.
    pub fn note_backlog(&self, backlog: Option<u64>, instances: usize) -> Option<Standing> {
        self.backlog.store(backlog.unwrap_or(0), Ordering::Relaxed);
        self.period.store(instances as u64, Ordering::Relaxed);
        self.judged()
    }

    /// The standing now, when it changed.
    fn judged(&self) -> Option<Standing> {
        let lag = Duration::from_millis(self.lag_ms.load(Ordering::Relaxed));
        let backlog = Backlog {
            waiting: self.backlog.load(Ordering::Relaxed),
            period: self.period.load(Ordering::Relaxed),
        };
        let was = self.lagging.load(Ordering::Relaxed);
        let standing = judge(was, lag, backlog);
        if let Some(s) = standing {
            self.lagging
                .store(s == Standing::FellBehind, Ordering::Relaxed);
        }
        standing
    }

    /// The report that waited longest, waiting for one.
    pub async fn take(&self) -> (StatusReport, Option<Standing>) {
        loop {
            let ready = self.ready.notified();
            if let Some(taken) = self.try_take() {
                return taken;
            }
            ready.await;
        }
    }

    pub fn state(&self) -> IntakeState {
        IntakeState {
            lag: Duration::from_millis(self.lag_ms.load(Ordering::Relaxed)),
            waiting: self.waiting.lock().expect("poisoned").order.len(),
            replaced: self.replaced.load(Ordering::Relaxed),
            backlog: self.backlog.load(Ordering::Relaxed),
        }
    }
}

/// Reports waiting in the broker beside how many arrive in a report period.
#[derive(Debug, Clone, Copy, Default)]
struct Backlog {
    waiting: u64,
    period: u64,
}

impl Backlog {
    /// A report period's worth or more: as late as [`LAGGING`].
    fn behind(self) -> bool {
        self.waiting > 0 && self.waiting >= self.period.max(1)
    }

    /// A quarter of a period at most: as [`CAUGHT_UP`] is to [`LAGGING`].
    fn caught_up(self) -> bool {
        self.waiting <= self.period / 4
    }
}

/// Whether a report that waited `lag` in the conductor, with `backlog` waiting in the
/// broker, changes the intake's standing.
fn judge(lagging: bool, lag: Duration, backlog: Backlog) -> Option<Standing> {
    let behind = lag >= LAGGING || backlog.behind();
    let caught_up = lag < CAUGHT_UP && backlog.caught_up();
    match lagging {
        false if behind => Some(Standing::FellBehind),
        true if caught_up => Some(Standing::CaughtUp),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(instance: &str, sequence: u64) -> StatusReport {
        let mut r = crate::registry::sample_report(instance);
        r.sequence = sequence;
        r
    }

    fn take(i: &Intake) -> Option<(String, u64)> {
        i.try_take()
            .map(|(r, _)| (r.instance.to_string(), r.sequence))
    }

    #[test]
    fn only_the_newest_report_of_an_instance_waits_and_the_order_is_first_come() {
        let i = Intake::default();
        i.offer(report("db-1", 1));
        i.offer(report("db-2", 1));
        i.offer(report("db-1", 2));
        i.offer(report("db-1", 3));
        assert_eq!(
            i.state(),
            IntakeState {
                lag: Duration::ZERO,
                waiting: 2,
                replaced: 2,
                backlog: 0,
            }
        );
        assert_eq!(take(&i), Some(("db-1".into(), 3)));
        assert_eq!(take(&i), Some(("db-2".into(), 1)));
        assert_eq!(take(&i), None);
        // Taken, an instance's next report waits again.
        i.offer(report("db-1", 4));
        assert_eq!(take(&i), Some(("db-1".into(), 4)));
    }

    #[test]
    fn a_flood_of_reports_waits_as_one_per_instance() {
        let i = Intake::default();
        for seq in 0..10_000 {
            i.offer(report(&format!("db-{}", seq % 50), seq));
        }
        let s = i.state();
        assert_eq!((s.waiting, s.replaced), (50, 10_000 - 50));
        // Each instance's last.
        let mut newest: Vec<u64> = std::iter::from_fn(|| take(&i).map(|t| t.1)).collect();
        newest.sort();
        assert_eq!(newest, (10_000 - 50..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn the_lag_counts_from_the_first_unprocessed_report_and_is_announced_once() {
        let i = Intake::default();
        i.offer(report("db-1", 1));
        std::thread::sleep(Duration::from_millis(30));
        i.offer(report("db-1", 2));
        let (r, _) = i.try_take().unwrap();
        assert_eq!(r.sequence, 2);
        assert!(
            i.state().lag >= Duration::from_millis(30),
            "{:?}",
            i.state()
        );

        let none = Backlog::default();
        assert_eq!(judge(false, Duration::from_millis(999), none), None);
        assert_eq!(judge(false, LAGGING, none), Some(Standing::FellBehind));
        assert_eq!(judge(true, Duration::from_secs(5), none), None);
        assert_eq!(judge(true, Duration::from_millis(500), none), None);
        assert_eq!(
            judge(true, Duration::from_millis(100), none),
            Some(Standing::CaughtUp)
        );
        assert_eq!(judge(false, Duration::from_millis(100), none), None);
    }

    #[test]
    fn a_report_periods_worth_waiting_in_the_broker_is_behind_until_a_quarter_is_left() {
        let fast = Duration::from_millis(1);
        let waiting = |waiting| Backlog {
            waiting,
            period: 1000,
        };
        assert_eq!(judge(false, fast, waiting(999)), None);
        assert_eq!(
            judge(false, fast, waiting(1000)),
            Some(Standing::FellBehind)
        );
        assert_eq!(judge(true, fast, waiting(251)), None);
        assert_eq!(judge(true, fast, waiting(250)), Some(Standing::CaughtUp));
        // Caught up needs both: nothing in the broker, yet a slow intake, is behind.
        assert_eq!(judge(true, Duration::from_millis(500), waiting(0)), None);

        // Through the intake: the backlog is judged with the last lag taken.
        let i = Intake::default();
        assert_eq!(i.note_backlog(None, 3), None);
        assert_eq!(i.note_backlog(Some(5), 3), Some(Standing::FellBehind));
        assert_eq!(i.state().backlog, 5);
        assert_eq!(i.note_backlog(Some(4), 3), None);
        assert_eq!(i.note_backlog(Some(0), 3), Some(Standing::CaughtUp));
    }

    #[tokio::test]
    async fn take_waits_for_a_report() {
        let i = std::sync::Arc::new(Intake::default());
        let taker = tokio::spawn({
            let i = i.clone();
            async move { i.take().await.0.sequence }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        i.offer(report("db-1", 7));
        assert_eq!(taker.await.unwrap(), 7);
    }
}
