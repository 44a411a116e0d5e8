//! The master's lease: a master's agent keeps its engine writable only while it can
//! prove it reaches the broker, or, without the broker, that no replica of its set can
//! be promoted (the failsafe, see [`crate::failsafe`]).
//!
//! Every confirmed status report renews the lease, counted from the moment the report
//! was *sent* (so the agent's deadline is never later than one the conductor computes
//! from the report's arrival); a failsafe round renews a lease still running, counted
//! from the moment it asked. When the lease runs out the agent sets its engine
//! read-only on its own and says `fenced` in its reports; a command that gives it a
//! role again (at the current epoch, as every accepted command is) lifts the fence.
//! The conductor never promotes a replica before the lease of a master it cannot reach
//! has run out, so a master cut off from the broker is read-only before anyone else is
//! writable.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct Lease {
    inner: Mutex<State>,
    /// Wakes the lease watcher when a lease starts: renewals only ever move the
    /// deadline later, so a watcher asleep until the old one is never late.
    started: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// `None` when this server is not a master (no lease to hold).
    valid_until: Option<Instant>,
    fenced: bool,
}

impl Lease {
    /// The broker was reached at `since` (a confirmed report sent then, a command
    /// received then): writable until `since + lease`.
    pub fn renew(&self, since: Instant, lease: Duration) {
        let mut s = self.inner.lock().expect("poisoned");
        let until = since + lease;
        if s.valid_until.is_none_or(|v| v < until) {
            s.valid_until = Some(until);
        }
    }

    /// As [`Lease::renew`], but only a lease still running at `since` (the failsafe's
    /// renewal): one that ran out is never revived, since the conductor may already be
    /// promoting on the strength of it. True when renewed.
    pub fn renew_if_live(&self, since: Instant, lease: Duration) -> bool {
        let mut s = self.inner.lock().expect("poisoned");
        match s.valid_until {
            Some(v) if v > since && !s.fenced => {
                s.valid_until = Some(v.max(since + lease));
                true
            }
            _ => false,
        }
    }

    /// The conductor gave this server a role: any fence is lifted and, for a master, a
    /// fresh lease starts.
    pub fn granted(&self, master: bool, lease: Duration) {
        let mut s = self.inner.lock().expect("poisoned");
        s.fenced = false;
        s.valid_until = master.then(|| Instant::now() + lease);
        if master {
            self.started.notify_one();
        }
    }

    /// Waits until a lease is granted (returns at once if one was since the last call).
    pub async fn started(&self) {
        self.started.notified().await
    }

    /// When the lease runs out, while it is held and not yet fenced.
    pub fn deadline(&self) -> Option<Instant> {
        let s = self.inner.lock().expect("poisoned");
        if s.fenced {
            None
        } else {
            s.valid_until
        }
    }

    /// True when the lease has run out and the engine is not fenced yet.
    pub fn must_fence(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|v| v <= now)
    }

    pub fn set_fenced(&self) {
        self.inner.lock().expect("poisoned").fenced = true;
    }

    pub fn fenced(&self) -> bool {
        self.inner.lock().expect("poisoned").fenced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_out_unless_renewed_and_a_grant_lifts_the_fence() {
        let lease = Lease::default();
        let l = Duration::from_millis(100);
        let now = Instant::now();
        assert!(!lease.must_fence(now + l * 10), "no master, no lease");
        lease.granted(true, l);
        assert!(!lease.must_fence(Instant::now()));
        assert!(lease.must_fence(Instant::now() + l * 2));
        lease.renew(Instant::now() + l, l);
        assert!(!lease.must_fence(Instant::now() + l + l / 2), "renewed");
        lease.renew(now, l);
        assert!(
            !lease.must_fence(Instant::now() + l + l / 2),
            "an older renewal never shortens the lease"
        );
        assert!(
            !lease.renew_if_live(Instant::now() + l * 5, l),
            "a lease that ran out is never revived"
        );
        assert!(lease.renew_if_live(Instant::now(), l));
        lease.set_fenced();
        assert!(lease.fenced());
        assert!(!lease.must_fence(Instant::now() + l * 10), "fenced once");
        lease.granted(false, l);
        assert!(!lease.fenced());
        assert!(
            !lease.must_fence(Instant::now() + l * 10),
            "a replica holds no lease"
        );
    }
}
