//! Master-master pairs through the API: made at set creation (`mode: master-master`
//! with a `peer`), shown in the set's view, and switched by the switchover request.

use std::sync::Arc;

use tandem_api::{CreateSet, PairView, SetMode};
use tandem_proto::{EngineKind, InstanceId, PairSide, Position};

use super::sets::{accepted, Accepted};
use super::{bad_request, conflict, unknown_instance, ApiError};
use crate::store::{PairRecord, ReplicaSet};
use crate::workflow::{start_for_operator, Spec};
use crate::Conductor;

const BY: &str = "operator";

/// A pair from `req.master` and `req.peer`: the peer is seeded from the master when it
/// is empty, attached as it is when it holds the master's data already, and refused
/// otherwise (it would bring a history of its own).
pub(super) async fn create(c: &Arc<Conductor>, req: CreateSet) -> Accepted {
    debug_assert_eq!(req.mode, SetMode::MasterMaster);
    let master = &req.master;
    let Some(peer) = req.peer.clone() else {
        return Err(bad_request(
            "a master-master set needs its other side: `peer` (--peer)",
        ));
    };
    if req.dr.is_some() || req.dr_replicas > 0 {
        return Err(bad_request(
            "a master-master pair runs in one zone; `dr` goes with master-slave sets",
        ));
    }
    if &peer == master {
        return Err(bad_request(format!(
            "{master} cannot be its own peer: a pair is two servers"
        )));
    }
    super::sets::free_instance(c, &peer)?;
    let report = |i: &InstanceId| c.registry.report(i).ok_or_else(|| unknown_instance(i));
    let (m, p) = (report(master)?, report(&peer)?);
    for r in [&m, &p] {
        if r.engine != EngineKind::Mariadb {
            return Err(bad_request(format!(
                "{} runs {}: master-master pairs are made of MariaDB servers",
                r.instance, r.engine
            )));
        }
    }
    let seed = peer_needs_seed(master, m.position.as_ref(), &peer, p.position.as_ref())
        .map_err(conflict)?;
    let rules = crate::placement::resolve(c, &req.rules)?;
    if let Some(why) = crate::decide::placement::contradiction(&rules) {
        return Err(bad_request(why));
    }
    // With semi-sync the passive side acknowledges every commit of the active one.
    super::sets::record_new_set(c, &req.id, master, &rules, req.semi_sync)?;
    let spec = Spec::CreatePair {
        set: req.id,
        master: req.master,
        peer,
        seed,
    };
    Ok(accepted(start_for_operator(c, spec, BY).await?))
}

/// Whether the peer must be seeded from the master: yes when it holds nothing, no when
/// everything it holds the master holds too; refused when it holds something else.
fn peer_needs_seed(
    master: &InstanceId,
    at_master: Option<&Position>,
    peer: &InstanceId,
    at_peer: Option<&Position>,
) -> Result<bool, String> {
    let (Some(m), Some(p)) = (at_master, at_peer) else {
        return Err(format!(
            "the position of {} is not known yet (its agent has not reported one)",
            if at_master.is_none() { master } else { peer }
        ));
    };
    if matches!(p, Position::Gtid(g) if g.is_empty()) {
        return Ok(true);
    }
    if m.contains(p) {
        return Ok(false);
    }
    Err(format!(
        "{peer} is not empty and does not hold {master}'s data: it is at {p}, {master} at \
         {m} ({} is not in {master}'s history); empty it, or pair {master} with an empty \
         server to have it seeded",
        p.beyond(&[m])
            .map_or_else(|| p.to_string(), |e| e.to_string())
    ))
}

/// The pair of `set` as it stands, if it is one.
pub(super) fn view(c: &Conductor, set: &ReplicaSet) -> Option<PairView> {
    let pair = c.store.pair(&set.id).ok().flatten()?;
    let active = set.master.clone();
    let passive = pair.peer_of(&active)?.clone();
    // The ledger is the passive side's only while the pair is whole (after a failover
    // and until the old side rejoins, it is not).
    let whole = set
        .member(&active)
        .is_some_and(|m| m.replicates_from.as_ref() == Some(&passive));
    let stray_write = c
        .registry
        .report(&passive)
        .and_then(|r| r.position)
        .filter(|_| whole)
        .and_then(|at| stray_of(&pair, &passive, &at));
    Some(PairView {
        first: pair.first,
        second: pair.second,
        active,
        passive,
        stray_write,
    })
}

/// What `passive` wrote in its own domain past the ledger, as a GTID.
fn stray_of(pair: &PairRecord, passive: &InstanceId, at: &Position) -> Option<String> {
    let side: PairSide = pair.side_of(passive)?;
    let written = crate::workflow::written_by(at, side);
    (written > pair.passive_written).then(|| match at {
        Position::Gtid(g) => g
            .get(side.domain())
            .map_or_else(String::new, |g| g.to_string()),
        other => other.to_string(),
    })
}

/// A switchover of a pair goes to its passive side only (a read replica under the pair
/// is not a side of it).
pub(super) fn check_switch(
    c: &Conductor,
    set: &ReplicaSet,
    candidate: &InstanceId,
) -> Result<(), ApiError> {
    let Some(pair) = c.store.pair(&set.id)? else {
        return Ok(());
    };
    if pair.side_of(candidate).is_none() {
        return Err(bad_request(format!(
            "{candidate} is a read replica of the pair {} ({} and {}): only the passive \
             side becomes active",
            set.id, pair.first, pair.second
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Option<Position> {
        Some(match s {
            "" => Position::Gtid(tandem_proto::GtidSet::empty()),
            s => s.parse().unwrap(),
        })
    }

    #[test]
    fn an_empty_peer_is_seeded_a_copy_is_attached_another_history_is_refused() {
        let (m, p) = ("db-1".parse().unwrap(), "db-2".parse().unwrap());
        let master = at("0-11-40");
        assert_eq!(
            peer_needs_seed(&m, master.as_ref(), &p, at("").as_ref()),
            Ok(true)
        );
        assert_eq!(
            peer_needs_seed(&m, master.as_ref(), &p, at("0-11-39").as_ref()),
            Ok(false)
        );
        let err = peer_needs_seed(&m, master.as_ref(), &p, at("0-22-41").as_ref()).unwrap_err();
        assert!(
            err.contains("does not hold db-1's data") && err.contains("0-22-41"),
            "{err}"
        );
        let err = peer_needs_seed(&m, None, &p, at("").as_ref()).unwrap_err();
        assert!(err.contains("position of db-1"), "{err}");
    }
}
