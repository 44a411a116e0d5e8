//! The failsafe (see `tandem_proto::failsafe`): a master rides out a broker outage on
//! promises from every replica of its set, asked for over UDP; a replica gives them
//! only to the master the conductor named, while it receives from it, and withdraws
//! before any command that could end in its promotion.
//!
//! Deciding is here ([`Failsafe`]: who may promise, what a round proved), doing is in
//! the agent (the socket loop and the round task below).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tandem_proto::{
    Epoch, FailsafeAssignment, FailsafeDatagram, FailsafeMessage, FailsafeState, InstanceId,
    Sealed, Secret,
};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::Agent;

/// How long after its last promise ran out a replica still waits before it runs a
/// command that withdrew it: the master's fence must have landed by then. As long as
/// the conductor's margin on a lease, for the same reason.
pub(crate) const WITHDRAW_MARGIN: Duration = Duration::from_millis(400);

/// The largest datagram either side sends or reads.
const MAX_DATAGRAM: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

pub(crate) struct Failsafe {
    me: InstanceId,
    /// The longest promise this agent gives (its own lease: the fleet shares one).
    longest_promise: Duration,
    inner: Mutex<State>,
    /// Wakes a round when its last promise arrives.
    answered: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// As a master: the replicas whose promises renew the lease.
    list: Option<List>,
    round: Option<Round>,
    /// Lease renewals that came from promises.
    held: u64,
    /// Whether the last round renewed the lease (for logging the changes only).
    holding: bool,
    /// As a replica: the master it answers, and the key.
    grant: Option<Grant>,
    /// The master this replica receives from now (its IO thread runs), per the last
    /// probe.
    receiving_from: Option<InstanceId>,
    /// Until when this replica promised not to leave its master.
    promised_until: Option<Instant>,
    /// The epoch of the last command that withdrew the promise: a grant at that epoch
    /// or an older one (sent before, delivered late) is refused, so a failover's drain
    /// is never undone by an assignment from before it.
    withdrawn_at: Epoch,
}

struct List {
    epoch: Epoch,
    peers: Vec<Peer>,
}

struct Peer {
    instance: InstanceId,
    addr: Option<SocketAddr>,
    key: Vec<u8>,
}

struct Round {
    nonce: u64,
    sent: Instant,
    asked: Duration,
    promised: HashMap<InstanceId, Duration>,
}

struct Grant {
    master: InstanceId,
    key: Vec<u8>,
}

/// What a round proved: writable until `sent + promise`.
#[derive(Debug, PartialEq)]
pub(crate) enum RoundOutcome {
    Held {
        sent: Instant,
        promise: Duration,
    },
    /// These peers did not promise.
    Missing(Vec<InstanceId>),
}

fn mac(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

fn seal(key: &[u8], message: &FailsafeMessage) -> Vec<u8> {
    let body = tandem_proto::codec::encode(message).expect("a failsafe message encodes");
    let datagram = FailsafeDatagram {
        mac: mac(key, &body),
        body,
    };
    tandem_proto::codec::encode(&datagram).expect("a failsafe datagram encodes")
}

/// The message in `bytes`, once its code checks out under the key `key_of` gives for
/// the replica it concerns; `None` for anything else (undecodable, unknown replica,
/// forged).
fn open(
    bytes: &[u8],
    key_of: impl FnOnce(&FailsafeMessage) -> Option<Vec<u8>>,
) -> Option<FailsafeMessage> {
    let datagram: FailsafeDatagram = tandem_proto::codec::decode(bytes).ok()?;
    let message: FailsafeMessage = tandem_proto::codec::decode(&datagram.body).ok()?;
    let key = key_of(&message)?;
    let mut m = HmacSha256::new_from_slice(&key).ok()?;
    m.update(&datagram.body);
    // Constant-time comparison.
    m.verify_slice(&datagram.mac).ok()?;
    Some(message)
}

impl Failsafe {
    pub fn new(me: InstanceId, longest_promise: Duration) -> Failsafe {
        Failsafe {
            me,
            longest_promise,
            inner: Mutex::new(State {
                // The agent before this one may have promised just before it stopped:
                // nothing that withdraws runs until such a promise would have run out.
                promised_until: Some(Instant::now() + longest_promise),
                ..State::default()
            }),
            answered: tokio::sync::Notify::new(),
        }
    }

    /// The conductor's assignment, at `epoch`, with each peer's endpoint resolved (a
    /// lookup, done before the lock is taken) and its keys opened by `open` (they come
    /// sealed to this agent). A replica's grant from no later than its last withdrawal
    /// is refused.
    pub fn assign(
        &self,
        assignment: &FailsafeAssignment,
        epoch: Epoch,
        resolved: Vec<Option<SocketAddr>>,
        open: &dyn Fn(&Sealed) -> Result<Secret, String>,
    ) -> Result<(), String> {
        let key = |sealed: &Sealed| {
            open(sealed)
                .map(|k| k.expose().as_bytes().to_vec())
                .map_err(|e| format!("a failsafe key: {e}"))
        };
        // Opened before anything changes: a key that does not open changes nothing.
        let keys = match assignment {
            FailsafeAssignment::Master { peers } => peers
                .iter()
                .map(|p| key(&p.key))
                .collect::<Result<Vec<_>, _>>()?,
            FailsafeAssignment::Replica { key: k, .. } => vec![key(k)?],
        };
        let mut s = self.inner.lock().expect("poisoned");
        if matches!(assignment, FailsafeAssignment::Replica { .. }) && epoch <= s.withdrawn_at {
            return Err(format!(
                "this replica withdrew its failsafe promise at epoch {} (drained, re-pointed \
                 or promoted); an assignment at epoch {epoch} is from before that",
                s.withdrawn_at
            ));
        }
        match assignment {
            FailsafeAssignment::Master { peers } => {
                s.list = Some(List {
                    epoch,
                    peers: peers
                        .iter()
                        .zip(resolved)
                        .zip(keys)
                        .map(|((p, addr), key)| Peer {
                            instance: p.instance.clone(),
                            addr,
                            key,
                        })
                        .collect(),
                });
                s.round = None;
                s.grant = None;
            }
            FailsafeAssignment::Replica { master, .. } => {
                s.grant = Some(Grant {
                    master: master.clone(),
                    key: keys.into_iter().next().expect("one key for a replica"),
                });
                s.list = None;
                s.round = None;
            }
        }
        Ok(())
    }

    /// A command gave this server its role: a master's list and a replica's grant only
    /// survive where they still apply (a new assignment follows from the conductor).
    pub fn role_changed(&self, master: bool) {
        let mut s = self.inner.lock().expect("poisoned");
        if master {
            s.grant = None;
        } else {
            s.list = None;
            s.round = None;
            s.holding = false;
        }
    }

    /// What the last probe saw: the master this replica receives from, if any.
    pub fn observe(&self, receiving_from: Option<InstanceId>) {
        self.inner.lock().expect("poisoned").receiving_from = receiving_from;
    }

    /// No promise is given any more; returns how long the last one still needs to run
    /// out, with the margin, before a command that withdrew may run.
    pub fn withdraw(&self, now: Instant, epoch: Epoch) -> Duration {
        let mut s = self.inner.lock().expect("poisoned");
        s.grant = None;
        s.withdrawn_at = s.withdrawn_at.max(epoch);
        s.promised_until
            .map(|until| (until + WITHDRAW_MARGIN).saturating_duration_since(now))
            .unwrap_or_default()
    }

    pub fn state(&self) -> Option<FailsafeState> {
        let s = self.inner.lock().expect("poisoned");
        if let Some(list) = &s.list {
            return Some(FailsafeState::Master {
                epoch: list.epoch,
                peers: list.peers.iter().map(|p| p.instance.clone()).collect(),
                held: s.held,
            });
        }
        s.grant.as_ref().map(|g| FailsafeState::Replica {
            master: g.master.clone(),
        })
    }

    /// Starts a round: the pings to send, or `None` without a list to ask (a master
    /// with no replica, or none assigned, has no failsafe).
    pub fn start_round(
        &self,
        now: Instant,
        asked: Duration,
        nonce: u64,
    ) -> Option<Vec<(SocketAddr, Vec<u8>)>> {
        let mut s = self.inner.lock().expect("poisoned");
        let list = s.list.as_ref().filter(|l| !l.peers.is_empty())?;
        let pings = list
            .peers
            .iter()
            .filter_map(|p| {
                let ping = FailsafeMessage::Ping {
                    from: self.me.clone(),
                    to: p.instance.clone(),
                    nonce,
                    promise_ms: asked.as_millis() as u64,
                };
                Some((p.addr?, seal(&p.key, &ping)))
            })
            .collect();
        s.round = Some(Round {
            nonce,
            sent: now,
            asked,
            promised: HashMap::new(),
        });
        Some(pings)
    }

    /// Ends the round: held only when every peer of the list promised.
    pub fn finish_round(&self) -> RoundOutcome {
        let mut s = self.inner.lock().expect("poisoned");
        let Some(round) = s.round.take() else {
            return RoundOutcome::Missing(Vec::new());
        };
        let Some(list) = &s.list else {
            return RoundOutcome::Missing(Vec::new());
        };
        let missing: Vec<InstanceId> = list
            .peers
            .iter()
            .filter(|p| !round.promised.contains_key(&p.instance))
            .map(|p| p.instance.clone())
            .collect();
        if !missing.is_empty() || list.peers.is_empty() {
            return RoundOutcome::Missing(missing);
        }
        let promise = round
            .promised
            .values()
            .copied()
            .min()
            .unwrap_or_default()
            .min(round.asked);
        s.held += 1;
        RoundOutcome::Held {
            sent: round.sent,
            promise,
        }
    }

    /// Whether the round in progress has every promise it needs.
    fn round_complete(&self) -> bool {
        let s = self.inner.lock().expect("poisoned");
        match (&s.round, &s.list) {
            (Some(r), Some(l)) => l.peers.iter().all(|p| r.promised.contains_key(&p.instance)),
            _ => true,
        }
    }

    /// Handles one datagram; returns the answer to send back, if any. Anything not
    /// authenticated, not addressed to this agent, or not expected now is dropped.
    pub fn receive(&self, bytes: &[u8], now: Instant) -> Option<Vec<u8>> {
        let mut s = self.inner.lock().expect("poisoned");
        let message = open(bytes, |m| match m {
            FailsafeMessage::Ping { to, .. } if *to == self.me => {
                s.grant.as_ref().map(|g| g.key.clone())
            }
            FailsafeMessage::Promise { from, to, .. } if *to == self.me => s
                .list
                .as_ref()?
                .peers
                .iter()
                .find(|p| &p.instance == from)
                .map(|p| p.key.clone()),
            _ => None,
        })?;
        match message {
            FailsafeMessage::Ping {
                from,
                nonce,
                promise_ms,
                ..
            } => {
                let grant = s.grant.as_ref()?;
                // Only the master the conductor named, and only while receiving from it.
                if grant.master != from || s.receiving_from.as_ref() != Some(&from) {
                    return None;
                }
                let promise = Duration::from_millis(promise_ms).min(self.longest_promise);
                let key = grant.key.clone();
                let until = now + promise;
                if s.promised_until.is_none_or(|u| u < until) {
                    s.promised_until = Some(until);
                }
                Some(seal(
                    &key,
                    &FailsafeMessage::Promise {
                        from: self.me.clone(),
                        to: from,
                        nonce,
                        promise_ms: promise.as_millis() as u64,
                    },
                ))
            }
            FailsafeMessage::Promise {
                from,
                nonce,
                promise_ms,
                ..
            } => {
                let round = s.round.as_mut().filter(|r| r.nonce == nonce)?;
                round
                    .promised
                    .insert(from, Duration::from_millis(promise_ms));
                drop(s);
                if self.round_complete() {
                    self.answered.notify_one();
                }
                None
            }
        }
    }
}

impl<E: Engine> Agent<E> {
    /// Answers pings and collects promises on the failsafe socket until `stop`.
    pub(crate) async fn serve_failsafe(
        self: Arc<Self>,
        socket: Arc<tokio::net::UdpSocket>,
        stop: CancellationToken,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = tokio::select! {
                _ = stop.cancelled() => return,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "failsafe socket");
                        continue;
                    }
                },
            };
            if let Some(answer) = self.failsafe.receive(&buf[..n], Instant::now()) {
                let _ = socket.send_to(&answer, from).await;
            }
        }
    }

    /// While this master's broker-confirmed renewals are late (less than half its lease
    /// left), asks every replica of its list for a promise and, with all of them,
    /// renews the lease from the moment it asked. A lease that ran out is never
    /// renewed: the conductor may be promoting on the strength of it.
    pub(crate) async fn hold_by_failsafe(
        self: Arc<Self>,
        socket: Arc<tokio::net::UdpSocket>,
        stop: CancellationToken,
    ) {
        let lease = self.settings.lease;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(lease / 6) => {}
            }
            let now = Instant::now();
            let Some(deadline) = self.lease.deadline() else {
                continue;
            };
            if deadline <= now || deadline - now > lease / 2 {
                continue;
            }
            let Some(pings) = self.failsafe.start_round(now, lease, rand::random()) else {
                continue;
            };
            for (addr, ping) in pings {
                let _ = socket.send_to(&ping, addr).await;
            }
            let _ = tokio::time::timeout(lease / 4, self.failsafe.answered.notified()).await;
            match self.failsafe.finish_round() {
                RoundOutcome::Held { sent, promise } => {
                    if self.lease.renew_if_live(sent, promise) && self.failsafe.set_holding(true) {
                        tracing::warn!(
                            promise_ms = promise.as_millis() as u64,
                            "the broker is not confirming reports: writes held by the \
                             failsafe (every replica promised not to leave this master)"
                        );
                    }
                }
                RoundOutcome::Missing(missing) => {
                    if self.failsafe.set_holding(false) {
                        tracing::warn!(
                            ?missing,
                            "failsafe: not every replica promised; the lease runs out unless \
                             the broker confirms a report"
                        );
                    }
                }
            }
        }
    }
}

impl Failsafe {
    /// Records whether the failsafe holds the lease; true when that changed.
    fn set_holding(&self, holding: bool) -> bool {
        let mut s = self.inner.lock().expect("poisoned");
        std::mem::replace(&mut s.holding, holding) != holding
    }
}

#[cfg(test)]
mod tests;
