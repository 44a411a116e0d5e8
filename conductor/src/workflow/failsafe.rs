//! The set's failsafe brought up to date (see `tandem_proto::failsafe`), at a new epoch:
//! every replica told to answer the master, with its key; then the master told its
//! list, the replicas of the set at this epoch, recorded before it leaves. Started by the
//! detector when what the agents report differs from the set, once the set is quiet.
//!
//! A replica that cannot be told now is still in the master's list: the failsafe then
//! cannot hold (it needs every replica's promise), which is the safe side.

use std::time::Duration;

use tandem_proto::{Command, FailsafeAssignment, FailsafePeer};

use super::{Ctx, Limits, Outcome, StepError};

/// An agent that does not answer within this is left for the next try. Short: a
/// failover that becomes due meanwhile waits for this workflow (an agent answers such a
/// command in milliseconds; one on a starved host is told at a later try).
const TELL: Duration = Duration::from_millis(300);

pub async fn run(ctx: &mut Ctx<'_>) -> Result<Outcome, StepError> {
    // At an epoch of its own: a replica refuses a grant from no later than its last
    // withdrawal (a failover's drain), so a grant from this run that arrives late can
    // never undo a drain of a later workflow.
    let set = ctx.set()?;
    ctx.c.store.bump_epoch(&set.id)?;
    let set = ctx.set()?;
    let (master, epoch) = (set.master.clone(), set.epoch);
    let replicas: Vec<_> = set.replicas().cloned().collect();
    let secret = ctx.c.store.failsafe_secret()?;
    let key = |r| crate::failsafe::key_for(&secret, &set.id, r);

    let held = ctx
        .c
        .registry
        .report(&master)
        .and_then(|r| match r.failsafe {
            Some(tandem_proto::FailsafeState::Master { epoch, .. }) => Some(epoch),
            _ => None,
        });
    ctx.c
        .store
        .record_failsafe_list(&set.id, &master, epoch, &replicas, held)?;
    // Each key sealed to the agent that uses it: the master (all of them) and its own
    // replica.
    let peers = replicas
        .iter()
        .map(|r| {
            Ok(FailsafePeer {
                instance: r.clone(),
                endpoint: ctx.c.registry.report(r).and_then(|rep| rep.seed_endpoint),
                key: ctx.seal_to(&master, &key(r))?,
            })
        })
        .collect::<Result<Vec<_>, StepError>>()?;
    // All at once and briefly: this holds the set, and a failover must not wait long
    // behind it (a master frozen meanwhile answers nobody).
    let limits = || Limits {
        timeout: Some(TELL),
        budget: Duration::ZERO,
    };
    // A replica with no key to seal to (re-keyed, not enrolled again) is not told, and
    // stays in the master's list: the failsafe cannot hold, the safe side.
    let mut untold = Vec::new();
    let mut steps = Vec::new();
    for r in &replicas {
        match ctx.seal_to(r, &key(r)) {
            Ok(key) => steps.push((
                "failsafe: answer the master".to_string(),
                r.clone(),
                epoch,
                Command::Failsafe(FailsafeAssignment::Replica {
                    master: master.clone(),
                    key,
                }),
                limits(),
            )),
            Err(e) => untold.push(format!("{r} ({e})")),
        }
    }
    steps.push((
        "failsafe: the master's list".to_string(),
        master.clone(),
        epoch,
        Command::Failsafe(FailsafeAssignment::Master { peers }),
        limits(),
    ));
    let targets: Vec<_> = steps.iter().map(|s| s.1.clone()).collect();
    untold.extend(
        targets
            .iter()
            .zip(ctx.send_all_limited(steps).await)
            .filter_map(|(to, result)| result.err().map(|e| format!("{to} ({e})"))),
    );
    if untold.is_empty() {
        Ok(Outcome::Done)
    } else {
        Ok(Outcome::RolledBack(format!(
            "not everyone was told, so the failsafe cannot hold until they are (tried \
             again later): {}",
            untold.join("; ")
        )))
    }
}
