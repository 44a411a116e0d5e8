//! How often the detector may repeat a repair.
//!
//! A master whose lease runs out goes read-only; when it is healthy again and nothing
//! failed over, the detector gives it writes back. On a host that keeps missing its
//! lease (starved of CPU, a flapping link) that would be a storm of write outages, one
//! per cycle. A replica on the wrong source is re-pointed; one that cannot be would be
//! re-pointed again at every look. So each repair that follows the previous one (within
//! the hold that one owed plus [`STREAK_WINDOW`]) must wait twice as long as the one
//! before (1 s, 2 s, 4 s … up to [`MAX_HOLD`]), and the wait is announced as an event.

use std::time::{Duration, Instant};

/// Repairs further apart than this (beyond the hold owed) start the count again.
pub const STREAK_WINDOW: Duration = Duration::from_secs(60);
/// The longest hold between two restores.
pub const MAX_HOLD: Duration = Duration::from_secs(60);

/// The repairs of one thing (a set's master's writes, one replica's source) so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retries {
    pub last: Option<Instant>,
    /// Restores in a row, each within the window of the one before.
    pub in_a_row: u32,
}

impl Retries {
    /// The hold the next repair owes after `in_a_row` repairs in a row.
    fn owed(&self) -> Duration {
        match self.in_a_row {
            0 => Duration::ZERO,
            n => Duration::from_secs(1u64 << (n - 1).min(6)).min(MAX_HOLD),
        }
    }

    /// How long a repair must still wait at `now`; zero when it may go now.
    pub fn hold(&self, now: Instant) -> Duration {
        match self.last {
            None => Duration::ZERO,
            Some(last) => self
                .owed()
                .saturating_sub(now.saturating_duration_since(last)),
        }
    }

    /// Records a repair at `now`: one more in a row, unless the last one was more than
    /// [`STREAK_WINDOW`] past the hold it owed (a quiet spell starts the count again).
    pub fn record(&mut self, now: Instant) {
        self.in_a_row = match self.last {
            Some(last) if now.saturating_duration_since(last) < self.owed() + STREAK_WINDOW => {
                self.in_a_row.saturating_add(1)
            }
            _ => 1,
        };
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restores_in_a_row_wait_twice_as_long_each_time_and_a_quiet_minute_resets() {
        let t0 = Instant::now();
        let mut r = Retries::default();
        assert_eq!(r.hold(t0), Duration::ZERO, "the first restore goes at once");
        r.record(t0);
        // (time since the last restore, expected hold) after each further restore.
        let mut at = t0;
        for (n, wait) in [1u64, 2, 4, 8, 16, 32, 60, 60].into_iter().enumerate() {
            assert_eq!(
                r.hold(at),
                Duration::from_secs(wait),
                "after {} restores in a row",
                n + 1
            );
            assert_eq!(r.hold(at + Duration::from_secs(wait)), Duration::ZERO);
            at += Duration::from_secs(wait);
            r.record(at);
        }
        assert_eq!(r.in_a_row, 9);
        // A quiet minute beyond the hold owed: the next one goes at once and counts
        // from one.
        let later = at + MAX_HOLD + STREAK_WINDOW;
        assert_eq!(r.hold(later), Duration::ZERO);
        r.record(later);
        assert_eq!(r.in_a_row, 1);
        assert_eq!(r.hold(later), Duration::from_secs(1));
    }
}
