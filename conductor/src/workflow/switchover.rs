//! Planned switchover, with no data loss:
//!
//! 1. old master read-only (from here no write is accepted anywhere);
//! 2. read its latest position;
//! 3. the candidate waits until it has applied that position;
//! 4. the topology change is recorded: new epoch, candidate is master;
//! 5. the candidate detaches and becomes writable — the point of no return;
//! 6. the candidate is enabled as master; the other replicas are re-pointed to it;
//! 7. the old master is demoted and attached to the candidate.
//!
//! A failure before step 5 completes rolls back: the old master is made writable again,
//! under a new epoch when the change was already recorded, and only after the candidate
//! confirmed it is read-only (never two writable servers). A failure after step 5 is
//! not rolled back: the candidate is the master; the workflow fails and says which
//! members still need re-pointing.

use tandem_proto::{Command, Epoch, InstanceId};

use super::{Ctx, Outcome, StepError};
use crate::store::TopologyChange;

/// How long the candidate may take to apply the old master's last position, unless the
/// request says otherwise.
pub(super) const CATCH_UP_MS: u64 = 10_000;

/// Where the writer goes.
pub enum Site {
    /// Within the set: the old master's direct replicas follow the new master.
    Same,
    /// A DR set's writer moves to its DR zone (`tandem dr switch`; the zones as they
    /// stand before it): every replica keeps its source, so the old master's replicas
    /// cascade under it, and the zones swap in the same change.
    Switch(tandem_api::DrSettings),
}

impl Site {
    /// The topology change that makes `new_master` the master.
    fn change(&self, new_master: &InstanceId, forward: bool) -> TopologyChange {
        match self {
            Site::Same => TopologyChange::NewMaster {
                new_master: new_master.clone(),
            },
            Site::Switch(dr) => TopologyChange::SiteSwitch {
                new_master: new_master.clone(),
                dr: if forward { dr.switched() } else { dr.clone() },
            },
        }
    }
}

/// A switchover of the set from `old` (its master at `epoch`, when the request was
/// accepted) to `candidate`.
pub async fn run(
    ctx: &mut Ctx<'_>,
    candidate: &InstanceId,
    old: &InstanceId,
    epoch: Epoch,
    catch_up_timeout_ms: Option<u64>,
    site: Site,
) -> Result<Outcome, StepError> {
    let old = old.clone();
    let catch_up_ms = catch_up_timeout_ms.unwrap_or(CATCH_UP_MS);
    // The old master's direct replicas follow the new master; cascaded replicas stay
    // under their own sources (the candidate's, if it had any, included). Journaled:
    // once the change is recorded they are the new master's, and a resumed workflow
    // must re-point the same ones. A site switch moves none of them.
    let set = ctx.set()?;
    let others: Vec<InstanceId> =
        ctx.decide("the old master's direct replicas", &old, epoch, |_| {
            Ok(match site {
                Site::Switch(_) => Vec::new(),
                Site::Same => set
                    .replicas_of(&old)
                    .filter(|m| *m != candidate)
                    .cloned()
                    .collect(),
            })
        })?;

    // A candidate its agent calls diverged is refused before writes stop.
    if let Some(why) = ctx
        .c
        .registry
        .report(candidate)
        .and_then(|r| r.replication)
        .and_then(|s| s.diverged)
    {
        return Err(StepError::Precondition(format!(
            "{candidate} is never promoted: it diverged from {old} ({why}); it is \
             quarantined, re-seed it"
        )));
    }

    // Steps 1-3: stop writes, let the candidate catch up, and check it holds nothing
    // the old master lacks (a transaction written on it: errant).
    let caught_up = ctx.catch_up(&old, candidate, epoch, catch_up_ms).await;
    if let Err(e) = caught_up {
        return rollback_before_change(ctx, &old, epoch, e).await;
    }

    // Step 4: the change is recorded with a new epoch; everything after carries it.
    let set = ctx.apply("record the new master", site.change(candidate, true))?;
    let new_epoch = set.epoch;

    // Step 5: the point of no return.
    if let Err(e) = ctx
        .send(
            "candidate detaches and becomes writable",
            candidate,
            new_epoch,
            Command::Detach,
        )
        .await
    {
        return rollback_after_change(ctx, &old, candidate, &site, e).await;
    }

    // Steps 6-7: forward only.
    ctx.enable_as_master("enable the new master", candidate, new_epoch)
        .await?;
    let mut left_behind = ctx.repoint(&others, new_epoch).await;
    let demoted = async {
        ctx.send("demote the old master", &old, new_epoch, Command::Demote)
            .await?;
        ctx.attach_to("attach the old master", candidate, &old, new_epoch, None)
            .await
    }
    .await;
    if let Err(e) = demoted {
        left_behind.push(format!("{old} ({e})"));
    }
    ctx.semi_sync_on(candidate, new_epoch).await?;
    super::repointed(candidate, new_epoch, left_behind)
}

pub(super) async fn rollback_before_change(
    ctx: &mut Ctx<'_>,
    old: &InstanceId,
    epoch: Epoch,
    cause: StepError,
) -> Result<Outcome, StepError> {
    match ctx
        .send(
            "rollback: old master writable again",
            old,
            epoch,
            Command::SetWritable,
        )
        .await
    {
        Ok(_) => Ok(Outcome::RolledBack(format!(
            "{cause}; rolled back: {old} is the writable master again"
        ))),
        Err(e) => Err(StepError::Precondition(format!(
            "{cause}; and the rollback failed: {e}; {old} may be read-only: no member is writable"
        ))),
    }
}

/// Gives writes back to `old` once a recorded change was undone at `epoch`: never two
/// writable, so only after `candidate` confirmed it is read-only; when it does not,
/// `old` stays read-only too and the error says so.
pub(super) async fn hand_back_writes(
    ctx: &mut Ctx<'_>,
    old: &InstanceId,
    candidate: &InstanceId,
    epoch: Epoch,
    cause: &StepError,
) -> Result<(), StepError> {
    if let Err(e) = ctx
        .send(
            "rollback: candidate read-only",
            candidate,
            epoch,
            Command::SetReadOnly,
        )
        .await
    {
        return Err(StepError::Precondition(format!(
            "{cause}; rollback stopped: {candidate} did not confirm it is read-only ({e}), so \
             {old} stays read-only too; no member is writable until an operator looks"
        )));
    }
    ctx.send(
        "rollback: old master writable again",
        old,
        epoch,
        Command::SetWritable,
    )
    .await?;
    Ok(())
}

async fn rollback_after_change(
    ctx: &mut Ctx<'_>,
    old: &InstanceId,
    candidate: &InstanceId,
    site: &Site,
    cause: StepError,
) -> Result<Outcome, StepError> {
    let set = ctx.apply(
        "rollback: record the old master again",
        site.change(old, false),
    )?;
    let epoch = set.epoch;
    hand_back_writes(ctx, old, candidate, epoch, &cause).await?;
    ctx.attach_to(
        "rollback: candidate replicates again",
        old,
        candidate,
        epoch,
        None,
    )
    .await?;
    Ok(Outcome::RolledBack(format!(
        "{cause}; rolled back at epoch {epoch}: {old} is the writable master again"
    )))
}
