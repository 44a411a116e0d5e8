//! Failover after the master is lost (automatic, or an operator's eject):
//!
//! 1. at once and in parallel: the old master is told to go read-only (one short try:
//!    it is probably gone), and every replica stops receiving and applies everything
//!    it received (`drain_received`);
//! 2. the candidate is chosen among the drained replicas ([`crate::decide::candidate::choose`])
//!    and the choice is journaled, with what the old master may hold that the
//!    candidate lacks;
//! 3. the change is recorded: new epoch, candidate is master, the old master is
//!    `failed`;
//! 4. the candidate detaches and becomes writable, then is enabled as master;
//! 5. the other replicas are re-pointed to it;
//! 6. the old master is told the new epoch, if it can hear it (it then refuses every
//!    older order); when it comes back the detector compares it with the new master
//!    and rejoins or quarantines it.
//!
//! Nothing before step 3 changes who may write, so a failure there leaves the set as
//! it was (its replicas stopped receiving from a master that is gone).

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_proto::{Command, ErrorKind, Health, InstanceId, Position, ReplyBody};

use tandem_api::FailoverSummary;

use super::{Ctx, Limits, Outcome, StepError};
use crate::decide::candidate::{choose, Drained, PromotionRule};
use crate::decide::verdict::lease_left;
use crate::store::{IntendedRole, TopologyChange};

/// The old master gets this long to answer "read-only" before it is treated as gone.
const FENCE_TRY: Duration = Duration::from_millis(500);

/// What step 2 decided, journaled so a resumed workflow decides the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Decision {
    candidate: InstanceId,
    position: Position,
    excluded: Vec<(InstanceId, String)>,
    /// The old master's last reported position.
    old_master_position: Option<Position>,
    /// Transactions the old master reported that the candidate does not have (possible
    /// only with asynchronous replication); `None` when the two have diverged.
    lost_transactions: Option<u64>,
    old_master_fenced: String,
    /// Replicas whose history split from the master's: quarantined, never re-pointed.
    #[serde(default)]
    quarantine: Vec<(InstanceId, String)>,
    /// Replicas that could not be drained (unreachable, engine down), with the error.
    #[serde(default)]
    not_drained: Vec<(InstanceId, String)>,
}

pub async fn run(
    ctx: &mut Ctx<'_>,
    failed: &InstanceId,
    requested: Option<&InstanceId>,
    force: bool,
    automatic: bool,
    site: bool,
) -> Result<Outcome, StepError> {
    let set = ctx.set()?;
    let dr = ctx.c.store.dr_settings(&ctx.wf.set_id)?;
    if site && dr.is_none() {
        return Err(StepError::Precondition(format!(
            "set {} is not a DR set",
            set.id
        )));
    }
    let epoch = set.epoch;
    // The same list before and after the change is recorded (the candidate is master
    // after it), so a resumed workflow sends the same steps.
    let replicas: Vec<InstanceId> = set
        .members
        .iter()
        .filter(|m| &m.instance != failed)
        .filter(|m| matches!(m.role, IntendedRole::Master | IntendedRole::Replica))
        .map(|m| m.instance.clone())
        .collect();
    if replicas.is_empty() {
        return Err(StepError::Precondition(format!(
            "set {} has no replica to fail over to",
            set.id
        )));
    }

    // A DR failover leaves the lost zone's members alone (they are unreachable, and
    // invalidated below): only the DR zone's are drained and considered. Journaled:
    // once invalidated they are no replicas, and a resumed workflow must know them.
    let in_lost_zone: Vec<InstanceId> = match (&dr, site) {
        (Some(dr), true) => ctx.decide("the lost zone's members", failed, epoch, |c| {
            Ok(replicas
                .iter()
                .filter(|r| {
                    crate::placement::location(c, r).map(|l| l.zone).as_deref()
                        == Some(dr.primary.as_str())
                })
                .cloned()
                .collect())
        })?,
        _ => Vec::new(),
    };
    let replicas: Vec<InstanceId> = replicas
        .into_iter()
        .filter(|r| !in_lost_zone.contains(r))
        .collect();

    // Step 1.
    let drain_ms = ctx.c.settings.failover.drain_timeout.as_millis() as u64;
    let mut steps = vec![(
        "fence the old master".to_string(),
        failed.clone(),
        epoch,
        Command::SetReadOnly,
        Limits {
            timeout: Some(FENCE_TRY),
            budget: Duration::ZERO,
        },
    )];
    for r in &replicas {
        steps.push((
            "drain what it received".to_string(),
            r.clone(),
            epoch,
            Command::DrainReceived {
                timeout_ms: drain_ms,
            },
            Limits {
                timeout: Some(ctx.c.settings.failover.drain_timeout + Duration::from_secs(2)),
                budget: Duration::from_secs(1),
            },
        ));
    }
    let mut results = ctx.send_all_limited(steps).await.into_iter();
    let (confirmed, mut fenced) = match results.next().expect("the fence step") {
        Ok(_) => (true, "read-only (it said so)".to_string()),
        Err(e) => (
            false,
            format!("did not answer read-only ({e}); it was judged unable to write"),
        ),
    };
    // A master that cannot be heard may be frozen, not dead: it would thaw writable
    // for the moment before its agent runs. The operator's fence closes that (and,
    // once it holds, nobody needs to wait for the lease).
    let host = if confirmed {
        HostFence::NotNeeded
    } else {
        fence_host(ctx.c, &ctx.wf.set_id, failed).await
    };
    if let HostFence::Fenced(said) | HostFence::Failed(said) = &host {
        fenced.push_str(&format!("; fence command: {said}"));
    }
    // Each replica's drained position, or why there is none; and whether its agent says
    // it diverged (now, or in its last report).
    let results: Vec<Result<ReplyBody, StepError>> = results.collect();
    // Replicas whose agent ran the drain: each withdrew its failsafe promise first.
    let withdrawn: Vec<InstanceId> = replicas
        .iter()
        .zip(&results)
        .filter(|(_, r)| match r {
            Ok(_) => true,
            Err(StepError::Command { error, .. }) => matches!(
                error.kind,
                ErrorKind::Diverged
                    | ErrorKind::EngineRefused
                    | ErrorKind::EngineUnavailable
                    | ErrorKind::Internal
            ),
            Err(_) => false,
        })
        .map(|(r, _)| r.clone())
        .collect();
    let drained: Vec<(InstanceId, Result<Position, String>, Option<String>)> = replicas
        .iter()
        .cloned()
        .zip(results)
        .map(|(r, result)| match result {
            Ok(ReplyBody::Position { position }) => (r, Ok(position), None),
            Ok(other) => (r, Err(format!("answered {other:?}")), None),
            Err(StepError::Command { error, .. }) if error.kind == ErrorKind::Diverged => {
                (r, Err(error.message.clone()), Some(error.message))
            }
            Err(e) => (r, Err(e.to_string()), None),
        })
        .collect();

    // With semi-synchronous replication every acknowledged commit is on at least one
    // of the master's replicas that acknowledge (none without semi-sync; an operator
    // who forces, or a DR failover, accepts the loss of what the rest hold).
    let mut acknowledging: Vec<&InstanceId> = Vec::new();
    if !force && !site {
        for m in set
            .members
            .iter()
            .filter(|m| m.replicates_from.as_ref() == Some(failed))
        {
            if ctx.acknowledges(&m.instance, Some(failed), &m.options)? {
                acknowledging.push(&m.instance);
            }
        }
    }
    let acknowledged_by = |r: &InstanceId| acknowledging.contains(&r);

    // One of those that could not be drained may hold the only copy of a commit the
    // others lack (the cut reached it last). Nobody is promoted without it: the
    // failover stands down and the detector tries again, until it answers.
    {
        let unheard: Vec<String> = drained
            .iter()
            .filter(|(r, ..)| acknowledged_by(r))
            .filter_map(|(r, position, diverged)| match (position, diverged) {
                (Err(why), None) => Some(format!("{r} ({why})")),
                _ => None,
            })
            .collect();
        if !unheard.is_empty() {
            let why = format!(
                "{} acknowledged the master's semi-synchronous commits and could not be \
                 drained: it may hold acknowledged writes no other replica has; waiting \
                 for it (`tandem failover run {} --force` promotes without it, losing them)",
                unheard.join(", "),
                set.id
            );
            return stand_down(ctx, epoch, &replicas, why).await;
        }
    }

    // The replicas are drained; nobody is promoted before the old master's lease has
    // run out (unless an operator forces it), and if the master is back meanwhile the
    // failover stands down.
    if !force && !matches!(host, HostFence::Fenced(_)) {
        if let Err(why) = wait_for_lease(ctx, failed, epoch).await? {
            return stand_down(ctx, epoch, &replicas, why).await;
        }
    }

    // Nor while the old master may still be writable on its replicas' failsafe
    // promises (a broker outage): one replica of each list it may hold must have
    // withdrawn (see `crate::failsafe`).
    if !confirmed && !force && !matches!(host, HostFence::Fenced(_)) {
        let set_id = ctx.wf.set_id.clone();
        let unbounded: Option<String> =
            ctx.decide("the old master's failsafe", failed, epoch, |c| {
                let reported = c.registry.report(failed).and_then(|r| r.failsafe);
                let recorded = c.store.failsafe_lists(&set_id, failed)?;
                let lists = crate::failsafe::possible_lists(reported.as_ref(), recorded);
                Ok(crate::failsafe::bounded(&lists, &withdrawn).err())
            })?;
        if let Some(why) = unbounded {
            return stand_down(ctx, epoch, &replicas, why).await;
        }
    }

    // Step 2. Replicas an operator paused or delayed are never candidates, nor (in a
    // DR set) those outside its primary zone: the writer crosses zones only by a DR
    // workflow. A DR failover is that workflow: only the DR zone's members are.
    let zone_of = |i: &InstanceId| crate::placement::location(ctx.c, i).map(|l| l.zone);
    // In a master-master pair only the passive side takes over: a read replica under
    // the pair would leave it without its other side.
    let pair = ctx.c.store.pair(&set.id)?;
    let not_a_side = |i: &InstanceId| {
        let pair = pair.as_ref()?;
        pair.side_of(i).is_none().then(|| {
            format!(
                "a read replica of the pair ({} and {}): only its passive side takes over",
                pair.first, pair.second
            )
        })
    };
    let held_back: HashMap<InstanceId, Option<String>> = set
        .members
        .iter()
        .map(|m| {
            let outside = dr.as_ref().and_then(|dr| {
                let zone = zone_of(&m.instance);
                let (wanted, why) = if site {
                    (dr.dr.as_str(), "a DR failover promotes only in the DR zone")
                } else {
                    (
                        dr.primary.as_str(),
                        "the writer moves there only by `tandem dr switch` or `tandem dr \
                         failover`",
                    )
                };
                (zone.as_deref() != Some(wanted)).then(|| {
                    format!(
                        "outside zone {wanted} (in {}): {why}",
                        zone.unwrap_or_else(|| "an unknown zone".into())
                    )
                })
            });
            let why = m
                .options
                .never_promoted()
                .or(outside)
                .or_else(|| not_a_side(&m.instance));
            (m.instance.clone(), why)
        })
        .collect();
    let cascaded: Vec<(InstanceId, InstanceId)> = set
        .members
        .iter()
        .filter(|m| m.role == IntendedRole::Replica)
        .filter_map(|m| {
            let source = m.replicates_from.as_ref()?;
            (source != failed).then(|| (m.instance.clone(), source.clone()))
        })
        .collect();
    let decision: Decision = ctx.decide("choose the candidate", failed, epoch, |c| {
        let old = c.registry.report(failed);
        let master_zone = old.as_ref().map(|r| r.zone.clone()).unwrap_or_default();
        let old_master_position = c.registry.last_position(failed);
        let candidates: Vec<Drained> = drained
            .iter()
            .map(|(instance, position, diverged)| {
                let report = c.registry.report(instance);
                let reported_diverged = report
                    .as_ref()
                    .and_then(|r| r.replication.as_ref())
                    .and_then(|s| s.diverged.clone());
                let meta: HashMap<String, String> = c
                    .store
                    .metadata(instance)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                let rule = PromotionRule::parse(meta.get("promotion_rule").map(String::as_str));
                Drained {
                    instance: instance.clone(),
                    position: match &rule {
                        Err(e) => Err(e.clone()),
                        Ok(_) => position.clone(),
                    },
                    zone: report.as_ref().map(|r| r.zone.clone()).unwrap_or_default(),
                    lag_s: report
                        .as_ref()
                        .and_then(|r| r.lag.as_ref())
                        .map(|l| l.seconds),
                    rule: rule.unwrap_or(PromotionRule::MustNot),
                    priority: meta
                        .get("failover_priority")
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0),
                    held_back: held_back.get(instance).cloned().flatten(),
                    diverged: diverged.clone().or(reported_diverged),
                }
            })
            .collect();
        let choice = choose(
            &candidates,
            &master_zone,
            c.settings.failover.max_lag_s,
            requested,
            force,
        )
        .map_err(StepError::Precondition)?;
        // How far the candidate is behind what the old master last reported.
        let lost_transactions = match (&old_master_position, &choice.position) {
            (Some(Position::Gtid(old)), Position::Gtid(new)) => new.transactions_behind(old),
            _ => None,
        };
        // Cascaded replicas not chosen: said so, with their source (they hold no more
        // than it sent them).
        let mut excluded = choice.excluded;
        for (instance, source) in &cascaded {
            if instance != &choice.candidate && !excluded.iter().any(|(i, _)| i == instance) {
                excluded.push((
                    instance.clone(),
                    format!("cascaded under {source}: behind its source, never ahead of it"),
                ));
            }
        }
        Ok(Decision {
            candidate: choice.candidate,
            position: choice.position,
            excluded,
            old_master_position,
            lost_transactions,
            old_master_fenced: fenced.clone(),
            quarantine: candidates
                .iter()
                .filter_map(|d| Some((d.instance.clone(), d.diverged.clone()?)))
                .collect(),
            // A paused or delayed replica refuses the drain; it follows the new master.
            not_drained: candidates
                .iter()
                .filter(|d| d.diverged.is_none() && d.held_back.is_none())
                .filter_map(|d| Some((d.instance.clone(), d.position.clone().err()?)))
                .collect(),
        })
    })?;
    let candidate = &decision.candidate;

    // Nor without what an acknowledging replica that cannot be promoted holds (its
    // promotion rule, say): the candidate would lose acknowledged writes.
    {
        let ahead: Vec<String> = drained
            .iter()
            .filter(|(r, ..)| acknowledged_by(r))
            .filter_map(|(r, position, diverged)| match (position, diverged) {
                (Ok(p), None) if !decision.position.contains(p) => Some(format!("{r} at {p}")),
                _ => None,
            })
            .collect();
        if !ahead.is_empty() {
            let why = format!(
                "{} acknowledged the master's semi-synchronous commits and holds some that \
                 the candidate {candidate} (at {}) lacks, but cannot be promoted itself; \
                 `tandem failover run {} --force` promotes {candidate}, losing them",
                ahead.join(", "),
                decision.position,
                set.id
            );
            return stand_down(ctx, epoch, &replicas, why).await;
        }
    }

    // Step 3.
    let change = match (&dr, site) {
        (Some(dr), true) => TopologyChange::SiteFailover {
            new_master: candidate.clone(),
            failed: std::iter::once(failed.clone())
                .chain(in_lost_zone.iter().cloned())
                .collect(),
            dr: dr.switched(),
        },
        _ => TopologyChange::Failover {
            new_master: candidate.clone(),
            failed: failed.clone(),
        },
    };
    let set = ctx.apply("record the failover", change)?;
    let new_epoch = set.epoch;
    // Each invalidated member is compared with where the new master stood when it
    // returns: rejoined when it holds nothing more, quarantined otherwise.
    for f in std::iter::once(failed).chain(&in_lost_zone) {
        ctx.c.remember_failed_at(&set.id, f, &decision.position);
    }
    if automatic {
        ctx.c.automatic_failover_done(&set.id);
    }

    // Step 4: from here the candidate is the master.
    ctx.send(
        "candidate detaches and becomes writable",
        candidate,
        new_epoch,
        Command::Detach,
    )
    .await?;
    ctx.enable_as_master("enable the new master", candidate, new_epoch)
        .await?;

    // Step 5: diverged replicas are quarantined (out of replication, never a source);
    // the others follow the new master, except those that could not even be drained.
    let mut left_behind: Vec<String> = Vec::new();
    for (instance, why) in &decision.quarantine {
        let quarantined = super::quarantine::run(ctx, instance, why).await;
        left_behind.push(match quarantined {
            Ok(()) => format!("{instance} (quarantined, diverged: {why})"),
            Err(e) => format!("{instance} (diverged: {why}; quarantine incomplete: {e})"),
        });
    }
    for (instance, why) in decision
        .not_drained
        .iter()
        .filter(|(i, _)| !in_lost_zone.contains(i))
    {
        left_behind.push(format!("{instance} (could not be drained: {why})"));
    }
    for i in &in_lost_zone {
        left_behind.push(format!(
            "{i} (invalidated: in the lost zone; compared with the new master when it returns)"
        ));
    }
    let left_out = |r: &InstanceId| {
        decision.quarantine.iter().any(|(i, _)| i == r)
            || decision.not_drained.iter().any(|(i, _)| i == r)
            || in_lost_zone.contains(r)
    };
    let reachable: Vec<InstanceId> = replicas
        .iter()
        .filter(|r| *r != candidate && !left_out(r))
        .cloned()
        .collect();
    // Direct replicas to the new master, cascaded ones back to their own source (the
    // drain stopped their receiving).
    left_behind.extend(ctx.repoint(&reachable, new_epoch).await);
    let repointed = replicas.len() - 1 - left_behind.len().min(replicas.len() - 1);

    // With no replica left a semi-sync master would hold every commit for the whole
    // timeout: it is switched on when one attaches (a rejoin, a new replica).
    if repointed > 0 {
        ctx.semi_sync_on(candidate, new_epoch).await?;
    }

    // Step 6: best effort; the epoch reaches it at the latest when it rejoins.
    let _ = ctx
        .send_once(
            "tell the old master the new epoch",
            failed,
            new_epoch,
            Command::SetReadOnly,
            FENCE_TRY,
        )
        .await;

    let summary = FailoverSummary {
        failed_master: failed.clone(),
        new_master: candidate.clone(),
        epoch: new_epoch,
        position: decision.position,
        old_master_position: decision.old_master_position,
        lost_transactions: decision.lost_transactions,
        old_master: decision.old_master_fenced,
        excluded: decision.excluded,
        not_repointed: left_behind,
        reason: match &ctx.wf.params {
            super::Spec::Failover { reason, .. } => reason.clone(),
            _ => None,
        },
    };
    let summary = serde_json::to_value(&summary).map_err(crate::store::StoreError::from)?;
    tracing::warn!(workflow = %ctx.wf.id, %summary, "failover done");
    ctx.note(FailoverSummary::STEP, candidate, new_epoch, summary)?;
    // The failover did its job: a master is writable. What it could not bring along
    // is listed, member by member, in the summary (and is drift from here on).
    Ok(Outcome::Done)
}

/// What the infrastructure fence did to a master that did not answer.
enum HostFence {
    /// It answered read-only, its agent is heard (its engine is down), or no fence
    /// command is configured.
    NotNeeded,
    /// The command says the host can serve nobody now.
    Fenced(String),
    Failed(String),
}

/// Runs the configured fence command against a master whose agent is silent. Not a
/// journaled step of its own (a fence is idempotent: a resumed workflow fences again);
/// what it did is journaled with the candidate decision.
async fn fence_host(
    c: &crate::Conductor,
    set: &tandem_proto::ReplicaSetId,
    failed: &InstanceId,
) -> HostFence {
    let Some(fence) = &c.settings.failover.fence else {
        return HostFence::NotNeeded;
    };
    // An agent that is heard saying its engine is down fences its own engine: the
    // engine restarts read-only and the agent obeys the new epoch. Only that: a recent
    // report that says anything else may be one the conductor took in late (a starved
    // conductor works through a backlog), from a master frozen since.
    let heard = c.registry.report_with_age(failed).is_some_and(|(r, age)| {
        age < c.settings.failover.detect_after && r.health == Health::EngineDown
    });
    if heard {
        return HostFence::NotNeeded;
    }
    let engine = c
        .store
        .instance(failed)
        .ok()
        .flatten()
        .and_then(|r| Some((r.host?, r.port?)));
    let target = crate::fence::Target {
        instance: failed,
        set,
        engine,
    };
    match fence.run(&target).await {
        Ok(said) => {
            tracing::warn!(instance = %failed, said, "fence command fenced the old master's host");
            HostFence::Fenced(if said.is_empty() { "done".into() } else { said })
        }
        Err(why) => {
            tracing::error!(instance = %failed, why, "fence command failed: waiting for the lease instead");
            HostFence::Failed(why)
        }
    }
}

/// Waits until the old master cannot write any more: its lease (recorded when the
/// workflow reached this point, so a resumed workflow waits too) has run out since its
/// last report, or its agent says its engine is down. The replicas are drained by now,
/// so only the master's own reports count. `Ok(Err(why))` when it turned out to be
/// back, or holds no lease to wait for.
async fn wait_for_lease(
    ctx: &mut Ctx<'_>,
    failed: &InstanceId,
    epoch: tandem_proto::Epoch,
) -> Result<Result<(), String>, StepError> {
    let lease_ms: Option<u64> = ctx.decide("the old master's lease", failed, epoch, |c| {
        Ok(c.registry.report(failed).and_then(|r| r.lease_ms))
    })?;
    let f = &ctx.c.settings.failover;
    loop {
        if ctx.set()?.master != *failed {
            // The change is recorded already (a resumed workflow): nothing to wait for.
            return Ok(Ok(()));
        }
        // Age of the last report; a conductor that restarted mid-failover and never
        // heard from the old master counts from its own start.
        let (report, age) = match ctx.c.registry.report_with_age(failed) {
            Some((r, age)) => (Some(r), age),
            None => (None, ctx.c.started.elapsed()),
        };
        if age < f.detect_after {
            match report {
                Some(r) if r.health == Health::EngineDown => return Ok(Ok(())),
                Some(_) => return Ok(Err(format!("{failed} reports again and its engine is up"))),
                None => {}
            }
        }
        let Some(lease_ms) = lease_ms else {
            return Ok(Err(format!(
                "{failed} announced no lease, so it may still accept writes; fail over with \
                 --force once it is known to be down"
            )));
        };
        match lease_left(lease_ms, age, f) {
            None => return Ok(Ok(())),
            Some(left) => tokio::time::sleep(left.min(Duration::from_millis(50))).await,
        }
    }
}

/// The master came back before anyone was promoted: the drained replicas replicate
/// from their sources again (the master, or their own for cascaded ones) and nothing
/// else changed.
async fn stand_down(
    ctx: &mut Ctx<'_>,
    epoch: tandem_proto::Epoch,
    replicas: &[InstanceId],
    why: String,
) -> Result<Outcome, StepError> {
    let mut not_back = Vec::new();
    for r in replicas {
        if let Err(e) = ctx
            .attach_to_intent("stand down: replicate from the source again", r, epoch)
            .await
        {
            not_back.push(format!("{r} ({e})"));
        }
    }
    let mut message = format!("failover cancelled before any promotion: {why}");
    if !not_back.is_empty() {
        message.push_str(&format!(
            "; these replicas are not replicating yet: {}",
            not_back.join("; ")
        ));
    }
    Ok(Outcome::RolledBack(message))
}
