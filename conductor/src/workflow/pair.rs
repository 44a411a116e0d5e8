//! Master-master pairs: made from a master and its peer, and switched.
//!
//! A pair is two servers replicating from each other, exactly one writable (the
//! active side, the set's master). Each side writes in a GTID domain of its own
//! (`configure_pair`), so what either wrote can be told apart, and mints its own
//! auto-increment keys. The passive side writes nothing: how far its own domain had
//! got when it became passive is recorded, and anything past that is a stray write
//! that blocks a switch to it (see `crate::store::PairRecord`).
//!
//! A switch is the switchover's first half and nothing else, in two round trips while
//! writes are stopped: the active side goes read-only (ending the sessions that could
//! write) and answers its position (`stop_writes`); the new epoch is recorded; the
//! passive side waits until it applied exactly that, checks it holds nothing more, and
//! becomes writable (`take_over_writes`). Both channels stay up throughout, so no
//! replication is re-pointed on the way: only read replicas under the pair follow the
//! new active side afterwards. (Agents older than protocol v5 take the switchover's
//! five steps: read-only, position, wait, position, writable.)

use tandem_proto::{Command, InstanceId, PairSide, Position, ProtocolVersion, ReplyBody};

use super::provision::{self, Seed};
use super::{create_set, Ctx, Outcome, StepError};
use crate::store::{PairRecord, ReplicaOptions, TopologyChange};

/// How far `position` has got in `side`'s own GTID domain (0: nothing written).
pub fn written_by(position: &Position, side: PairSide) -> u64 {
    match position {
        Position::Gtid(g) => g.get(side.domain()).map_or(0, |g| g.sequence),
        _ => 0,
    }
}

/// Makes the pair: `master` enabled, `peer` seeded from it (when `seed`) or attached as
/// it is, each configured as its side, and `master` replicating `peer` too.
pub async fn create(
    ctx: &mut Ctx<'_>,
    master: &InstanceId,
    peer: &InstanceId,
    seed: bool,
) -> Result<Outcome, StepError> {
    if let Outcome::RolledBack(why) = create_set::run(ctx, master).await? {
        return Ok(Outcome::RolledBack(why));
    }
    let no_peer = |why: String| {
        StepError::Precondition(format!(
            "set {} has its master {master}, but not its peer {peer}: {why}",
            ctx.wf.set_id
        ))
    };
    let joined = if seed {
        let from_master = Seed::Stream {
            from: master.clone(),
        };
        provision::run(
            ctx,
            std::slice::from_ref(peer),
            &from_master,
            &ReplicaOptions::default(),
            None,
        )
        .await?
    } else {
        super::attach::run(ctx, peer, &ReplicaOptions::default(), None).await?
    };
    if let Outcome::RolledBack(why) = joined {
        return Err(no_peer(why));
    }
    let epoch = ctx.set()?.epoch;
    for (side, who) in [(PairSide::First, master), (PairSide::Second, peer)] {
        ctx.send(
            &format!(
                "{who} writes as the {side} side (GTID domain {})",
                side.domain()
            ),
            who,
            epoch,
            Command::ConfigurePair { side: Some(side) },
        )
        .await?;
    }
    ctx.attach_reverse(master, peer, epoch).await?;
    let at = ctx
        .latest_position("the passive side's position", peer, epoch)
        .await?;
    ctx.apply(
        "record the pair",
        TopologyChange::PairUp {
            pair: PairRecord {
                first: master.clone(),
                second: peer.clone(),
                passive_written: written_by(&at, PairSide::Second),
            },
        },
    )?;
    Ok(Outcome::Done)
}

/// Moves the writable side from `old` to `candidate`, its peer, with no loss.
pub async fn switch(
    ctx: &mut Ctx<'_>,
    pair: &PairRecord,
    candidate: &InstanceId,
    old: &InstanceId,
    epoch: tandem_proto::Epoch,
    catch_up_ms: u64,
) -> Result<Outcome, StepError> {
    // The pair as it stood when the switch began: a resumed workflow judges the same.
    let pair: PairRecord = ctx.decide("the pair", old, epoch, |_| Ok(pair.clone()))?;
    let pair = &pair;
    let side = pair
        .side_of(candidate)
        .ok_or_else(|| StepError::Precondition(format!("{candidate} is not a side of the pair")))?;
    // Read replicas under the old active side follow the new one; journaled, so that a
    // resumed workflow re-points the same ones.
    let set = ctx.set()?;
    let readers: Vec<InstanceId> =
        ctx.decide("the read replicas of the active side", old, epoch, |_| {
            Ok(set
                .replicas_of(old)
                .filter(|m| *m != candidate)
                .cloned()
                .collect())
        })?;

    // A stray write on the passive side is refused before writes stop.
    let seen = ctx
        .latest_position("the passive side's position", candidate, epoch)
        .await?;
    stray(pair, candidate, side, &seen).map_or(Ok(()), Err)?;

    // Agents that speak protocol v5 switch in two round trips, the epoch recorded
    // between them; older ones step by step. Journaled: a resumed workflow takes the
    // same path.
    let both_v5 = [old, candidate].iter().all(|i| {
        ctx.c
            .registry
            .report(i)
            .is_some_and(|r| r.protocol.contains(ProtocolVersion::V5))
    });
    let two_trips: bool = ctx.decide(
        "switch in two round trips (protocol v5)",
        old,
        epoch,
        |_| Ok(both_v5),
    )?;

    // Writes stop on the active side, and its last position is known.
    let stopped = if two_trips {
        match ctx
            .send(
                "the active side stops writes",
                old,
                epoch,
                Command::StopWrites,
            )
            .await
        {
            Ok(ReplyBody::Position { position }) => Ok(position),
            Ok(other) => Err(StepError::Precondition(format!(
                "{old} answered stop_writes with {other:?}"
            ))),
            Err(e) => Err(e),
        }
    } else {
        ctx.catch_up(old, candidate, epoch, catch_up_ms).await
    };
    let position = match stopped {
        Ok(p) => p,
        Err(e) => return super::switchover::rollback_before_change(ctx, old, epoch, e).await,
    };

    // The point of no return: recorded with a new epoch, then the candidate writes.
    let old_side = side.other();
    let set = ctx.apply(
        "record the new active side",
        TopologyChange::PairSwitch {
            new_active: candidate.clone(),
            pair: PairRecord {
                passive_written: written_by(&position, old_side),
                ..pair.clone()
            },
        },
    )?;
    let new_epoch = set.epoch;
    // Writable first, as a switchover's detach is: the writer waits for nothing else.
    // Enabling it as the master (its lease, heartbeats) follows at once.
    if two_trips {
        // The wait, the errant check and writability in one command: refused, the
        // candidate stays read-only and the switch is rolled back under a newer epoch.
        let took = ctx
            .send(
                "the passive side catches up and takes the writes",
                candidate,
                new_epoch,
                Command::TakeOverWrites {
                    position,
                    timeout_ms: catch_up_ms,
                },
            )
            .await;
        if let Err(e) = took {
            return roll_back(ctx, pair, old, candidate, e).await;
        }
    } else {
        ctx.send(
            "the passive side writable",
            candidate,
            new_epoch,
            Command::SetWritable,
        )
        .await?;
    }
    ctx.enable_as_master("the passive side is the master", candidate, new_epoch)
        .await?;
    let mut left_behind = ctx.repoint(&readers, new_epoch).await;
    let passive = async {
        ctx.send(
            "the old active side passive",
            old,
            new_epoch,
            Command::Demote,
        )
        .await?;
        // With semi-sync the passive side acknowledges what the active side writes:
        // its channel (the old reverse one) restarts acknowledging.
        let options = ctx.options_of(old)?;
        if ctx.acknowledges(old, Some(candidate), &options)? {
            ctx.send(
                "the old active side acknowledges",
                old,
                new_epoch,
                Command::ResumeReplication { semi_sync: true },
            )
            .await?;
        }
        Ok::<_, StepError>(())
    }
    .await;
    if let Err(e) = passive {
        left_behind.push(format!("{old} ({e})"));
    }
    ctx.semi_sync_on(candidate, new_epoch).await?;
    super::repointed(candidate, new_epoch, left_behind)
}

/// Undoes a recorded switch whose candidate did not take the writes: `old` is the
/// active side again under a newer epoch, writable only once `candidate` confirmed it
/// is read-only (never two writable).
async fn roll_back(
    ctx: &mut Ctx<'_>,
    pair: &PairRecord,
    old: &InstanceId,
    candidate: &InstanceId,
    cause: StepError,
) -> Result<Outcome, StepError> {
    let set = ctx.apply(
        "rollback: record the old active side again",
        TopologyChange::PairSwitch {
            new_active: old.clone(),
            pair: pair.clone(),
        },
    )?;
    let epoch = set.epoch;
    super::switchover::hand_back_writes(ctx, old, candidate, epoch, &cause).await?;
    Ok(Outcome::RolledBack(format!(
        "{cause}; rolled back at epoch {epoch}: {old} is the writable active side again"
    )))
}

/// The stray write `candidate` (the passive side) holds in its own domain, if any.
fn stray(
    pair: &PairRecord,
    candidate: &InstanceId,
    side: PairSide,
    at: &Position,
) -> Option<StepError> {
    let written = written_by(at, side);
    (written > pair.passive_written).then(|| {
        StepError::Precondition(format!(
            "errant: {candidate} holds {} in its own write stream (GTID domain {}), written \
             on it while it was the passive side (it had reached {} there); the switch is \
             refused: re-seed {candidate} from the active side to drop it",
            match at {
                Position::Gtid(g) => g
                    .get(side.domain())
                    .map_or_else(String::new, |g| g.to_string()),
                other => other.to_string(),
            },
            side.domain(),
            pair.passive_written
        ))
    })
}
