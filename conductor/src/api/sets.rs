//! Replica sets: their members as intended and as observed, and the requests that
//! start the workflows that change them (create, add, detach, switchover, failover,
//! semi-sync) or switch automatic failover.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use tandem_api::{
    page_size, AddReplica, CreateSet, ErrorBody, Failover, FailoverAction, FailoverState,
    FailoverView, IntendedRole, MakeServers, MemberView, SeedMethod, SemiSyncRequest, SetQuery,
    SetView, Switchover, Verdict, WorkflowRow,
};
use tandem_proto::{BackupId, InstanceId, ReplicaSetId, Timestamp};

use super::paging::{self, Paged};
use super::{
    bad_request, body, conflict, not_found, parse_id, parse_set, unknown_instance, ApiError,
};
use crate::store::{ReplicaOptions, ReplicaSet};
use crate::workflow::provision::Seed;
use crate::workflow::{start_for_operator, Spec};
use crate::Conductor;

/// Who starts the workflows of this module, in their records.
const BY: &str = "api";

fn view(c: &Conductor, set: ReplicaSet) -> SetView {
    let members = set
        .members
        .iter()
        .map(|m| {
            let report = c.registry.shared(&m.instance);
            let drift = crate::decide::drift::drift(m, report.as_deref());
            let r = report.as_deref();
            MemberView {
                instance: m.instance.clone(),
                intended: m.clone(),
                observed: r.map(tandem_api::Contract::of),
                role: r.map(|r| r.role),
                health: r.map(|r| r.health),
                position: r.and_then(|r| r.position.clone()),
                lag_seconds: r.and_then(|r| r.lag.as_ref().map(|l| l.seconds)),
                semi_sync: r.and_then(|r| r.semi_sync),
                fenced: r.is_some_and(|r| r.fenced),
                diverged: r
                    .and_then(|r| r.replication.as_ref())
                    .and_then(|s| s.diverged.clone()),
                applying: r.and_then(|r| r.replication.as_ref()).map(|s| s.applying),
                engine_delay_s: r.and_then(|r| r.replication.as_ref()).map(|s| s.delay_s),
                engine_filter: r
                    .and_then(|r| r.replication.as_ref())
                    .and_then(|s| s.filter.clone()),
                fencing_hazards: r.map(|r| r.fencing_hazards.clone()).unwrap_or_default(),
                restart_needed: r.map(|r| r.restart_needed.clone()).unwrap_or_default(),
                failsafe: r.and_then(|r| r.failsafe.clone()),
                drift,
                location: crate::placement::location(c, &m.instance),
            }
        })
        .collect();
    let state = c.store.failover_state(&set.id).unwrap_or_default();
    let failover = FailoverView {
        automatic: c.settings.failover.automatic && !state.paused,
        verdict: c.failover_watch.verdict(&set.id),
        state,
    };
    let dr = c
        .store
        .dr_settings(&set.id)
        .ok()
        .flatten()
        .map(|settings| dr_view(c, &set, settings, state_semi_sync(c, &set)));
    let pair = super::pair::view(c, &set);
    let rules = crate::placement::rules_of(c, &set.id).unwrap_or_default();
    let violations =
        crate::decide::placement::violations(&rules, &crate::placement::of_set(c, &set));
    SetView {
        id: set.id,
        epoch: set.epoch,
        master: set.master,
        members,
        failover,
        rules,
        violations,
        dr,
        pair,
    }
}

fn state_semi_sync(c: &Conductor, set: &ReplicaSet) -> bool {
    c.store
        .failover_state(&set.id)
        .map(|s| s.semi_sync)
        .unwrap_or(false)
}

/// A DR set as it stands: who acknowledges, and whether the master's zone could be
/// lost without losing an acknowledged write.
fn dr_view(
    c: &Conductor,
    set: &ReplicaSet,
    settings: tandem_api::DrSettings,
    semi_sync: bool,
) -> tandem_api::DrView {
    use tandem_proto::SemiSync;
    let zone = |i: &InstanceId| crate::placement::location(c, i).map(|l| l.zone);
    let dr_source = set
        .replicas_of(&set.master)
        .find(|r| zone(r).as_deref() == Some(settings.dr.as_str()))
        .cloned();
    let acknowledging: Vec<InstanceId> = set
        .replicas()
        .filter(|r| {
            c.registry
                .report(r)
                .is_some_and(|r| r.semi_sync == Some(SemiSync::Acknowledging))
        })
        .cloned()
        .collect();
    let zone_safe = (semi_sync && settings.ack_from == tandem_api::AckFrom::OtherZone).then(|| {
        let master_zone = zone(&set.master);
        let waiting = c
            .registry
            .report(&set.master)
            .is_some_and(|r| r.semi_sync == Some(SemiSync::Active));
        let direct: Vec<&InstanceId> = acknowledging
            .iter()
            .filter(|r| set.member(r).and_then(|m| m.replicates_from.as_ref()) == Some(&set.master))
            .collect();
        waiting && !direct.is_empty() && direct.iter().all(|r| zone(r) != master_zone)
    });
    tandem_api::DrView {
        settings,
        dr_source,
        acknowledging,
        zone_safe,
    }
}

/// The replica sets, by id, a page at a time (500 unless `limit` says), kept by the
/// filters.
#[utoipa::path(get, path = "/v1/sets", tag = "sets", params(SetQuery), responses((status = 200, body = [SetView], headers(("x-next-page" = String, description = "the cursor of the next page (pass it as `after`); absent on the last"))), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(c): State<Arc<Conductor>>,
    q: Result<Query<SetQuery>, QueryRejection>,
) -> Result<Paged<SetView>, ApiError> {
    let q = paging::query(q)?;
    let after: Option<ReplicaSetId> = paging::cursor(q.after.as_deref())?;
    let instance = q
        .instance
        .as_deref()
        .map(|i| paging::instance_param("instance", i))
        .transpose()?;
    let size = page_size(q.limit, 500);
    // Sets are held in memory, in no order: sorted ids first, views only for the page.
    let mut sets: Vec<ReplicaSet> = c
        .store
        .sets()?
        .into_iter()
        .filter(|s| after.as_ref().is_none_or(|a| &s.id > a))
        .filter(|s| {
            instance
                .as_ref()
                .is_none_or(|i| s.members.iter().any(|m| &m.instance == i))
        })
        .filter(|s| {
            q.zone.as_ref().is_none_or(|z| {
                s.members.iter().any(|m| {
                    crate::placement::location(&c, &m.instance).is_some_and(|l| &l.zone == z)
                })
            })
        })
        .collect();
    sets.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    sets.truncate(size + 1);
    let page = paging::cut(sets, size, |s| s.id.to_string());
    Ok(Paged {
        items: page.items.into_iter().map(|s| view(&c, s)).collect(),
        next: page.next,
    })
}

#[utoipa::path(get, path = "/v1/sets/{id}", tag = "sets", params(("id" = String, Path)), responses((status = 200, body = SetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<SetView>, ApiError> {
    let id = parse_set(&id)?;
    let set = existing(&c, &id)?;
    Ok(Json(view(&c, set)))
}

/// The set `id`, or a 404 that names it.
pub(super) fn existing(c: &Conductor, id: &ReplicaSetId) -> Result<ReplicaSet, ApiError> {
    c.store
        .set(id)?
        .ok_or_else(|| not_found(format!("no replica set {id}")))
}

/// Records a new set: `master` its only member, keeping `rules`, with semi-sync when
/// asked; nothing is left behind when a step is refused.
pub(super) fn record_new_set(
    c: &Conductor,
    id: &ReplicaSetId,
    master: &InstanceId,
    rules: &[tandem_api::PlacementRule],
    semi_sync: bool,
) -> Result<(), ApiError> {
    c.store.create_set(id, master)?;
    let ids: Vec<_> = rules.iter().map(|r| r.id.clone()).collect();
    if let Err(e) = c.store.add_set_rules(id, &ids) {
        c.store.delete_set(id)?;
        return Err(e.into());
    }
    if semi_sync {
        c.store.set_failover_state(
            id,
            &FailoverState {
                semi_sync: true,
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

/// The instance must have reported, and must not be in a set already.
pub(super) fn free_instance(c: &Conductor, id: &InstanceId) -> Result<(), ApiError> {
    if c.registry.report(id).is_none() {
        return Err(unknown_instance(id));
    }
    if let Some(set) = c.store.set_of(id)? {
        return Err(conflict(format!(
            "{id} is already a member of replica set {set}"
        )));
    }
    Ok(())
}

/// `candidate` must be a replica of `set`.
fn replica_of(set: &ReplicaSet, candidate: &InstanceId) -> Result<(), ApiError> {
    if set.replicas().any(|r| r == candidate) {
        return Ok(());
    }
    Err(bad_request(format!(
        "{candidate} is not a replica of set {} (its master is {})",
        set.id, set.master
    )))
}

pub(super) fn accepted(row: WorkflowRow) -> (StatusCode, Json<WorkflowRow>) {
    (StatusCode::ACCEPTED, Json(row))
}

pub(super) type Accepted = Result<(StatusCode, Json<WorkflowRow>), ApiError>;
pub(super) type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

#[utoipa::path(post, path = "/v1/sets", tag = "sets", request_body = CreateSet, responses((status = 202, description = "the workflow that creates it", body = WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(State(c): State<Arc<Conductor>>, b: JsonBody<CreateSet>) -> Accepted {
    let req = body(b, r#"{"id": "<set>", "master": "<instance>"}"#)?;
    free_instance(&c, &req.master)?;
    match (req.mode, &req.peer) {
        (tandem_api::SetMode::MasterMaster, _) => return super::pair::create(&c, req).await,
        (tandem_api::SetMode::MasterSlave, Some(_)) => {
            return Err(bad_request(
                "`peer` goes with `mode: master-master` (--mode master-master)",
            ))
        }
        _ => {}
    }
    if let Some(profile) = req.dr.clone() {
        return super::dr::create(&c, req, &profile).await;
    }
    if req.dr_replicas > 0 || req.ack_from != tandem_api::AckFrom::Any {
        return Err(bad_request(
            "dr_replicas and ack_from go with a DR profile (`dr`)",
        ));
    }
    let rules = crate::placement::resolve(&c, &req.rules)?;
    if let Some(why) = crate::decide::placement::contradiction(&rules) {
        return Err(bad_request(why));
    }
    let master_at = vec![(
        req.master.clone(),
        crate::placement::location(&c, &req.master),
    )];
    if let Err(refused) = crate::decide::placement::admit(&rules, &Vec::new(), &master_at) {
        return Err(conflict(refused.to_string()));
    }
    record_new_set(&c, &req.id, &req.master, &rules, req.semi_sync)?;
    let spec = Spec::CreateSet {
        set: req.id,
        master: req.master,
    };
    Ok(accepted(start_for_operator(&c, spec, BY).await?))
}

#[utoipa::path(post, path = "/v1/sets/{id}/replicas", tag = "sets", params(("id" = String, Path)), request_body = AddReplica, responses((status = 202, body = WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_replica(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: JsonBody<AddReplica>,
) -> Accepted {
    let id = parse_set(&id)?;
    let req = body(
        b,
        r#"{"instance": "<instance>"} or {"instances": [...], "seed": "stream|backup|auto|none"}"#,
    )?;
    let set = existing(&c, &id)?;
    let mut names = req.instances.clone();
    names.extend(req.instance.clone());
    let mut make = None;
    match (req.count, names.is_empty()) {
        (Some(_), false) => {
            return Err(bad_request(
                "either name the new replicas or give a count to take from the pool, not both",
            ))
        }
        (Some(n), true) => {
            (names, make) = from_pool_or_provisioner(&c, &set, n, req.zone.as_deref(), req.seed)?
        }
        (None, true) => {
            return Err(bad_request(
                "name the new replica in `instance` (or several in `instances`), or take                  `count` from the pool",
            ))
        }
        (None, false) if req.zone.is_some() => {
            return Err(bad_request("`zone` goes with `count` (servers from the pool)"))
        }
        (None, false) => {}
    }
    let options = ReplicaOptions {
        delay_s: super::replicas::valid_delay(req.delay_s)?,
        paused: None,
        filter: super::replicas::valid_filter(req.filter)?,
    };
    let source = match &req.source {
        Some(s) => Some(cascade_source(&set, s)?),
        None => None,
    };
    // A cascaded replica is copied from its source by default: that source's binary
    // log then holds everything after the copy.
    let from = req.from.clone().or_else(|| source.clone());
    let seeded = req.seed != SeedMethod::None;
    let mut instances: Vec<InstanceId> = Vec::new();
    for i in names {
        if instances.contains(&i) {
            return Err(bad_request(format!("{i} is named twice")));
        }
        // A quarantined member is re-seeded in place: its data is replaced by a copy.
        let quarantined = set
            .members
            .iter()
            .any(|m| m.instance == i && m.role == IntendedRole::Quarantined);
        if quarantined && !seeded {
            return Err(bad_request(format!(
                "{i} is quarantined (it holds transactions the master lacks): re-seed it \
                 with --seed stream or --seed backup, which replaces its data"
            )));
        }
        if !quarantined {
            free_instance(&c, &i)?;
        }
        instances.push(i);
    }
    admit_placement(&c, &set, &instances)?;
    let seed = match req.seed {
        SeedMethod::None => {
            let [instance] = <[InstanceId; 1]>::try_from(instances).map_err(|_| {
                bad_request("several replicas at once need a seed method (stream, backup or auto)")
            })?;
            let spec = Spec::Attach {
                set: id,
                instance,
                options,
                source,
            };
            return Ok(accepted(start_for_operator(&c, spec, BY).await?));
        }
        SeedMethod::Stream => stream_from(&set, from)?,
        SeedMethod::Backup => Seed::Backup {
            backup_id: match &req.backup {
                Some(b) => recorded_backup(&c, &set, b)?,
                None => {
                    newest_backup(&c, &set)?
                        .ok_or_else(|| {
                            bad_request(format!(
                                "set {id} has no recorded backup; take one or seed by stream"
                            ))
                        })?
                        .backup_id
                }
            },
        },
        SeedMethod::Auto => match newest_backup(&c, &set)? {
            Some(b)
                if Timestamp::now().0.saturating_sub(b.created_at.0)
                    <= c.settings.seed_backup_max_age.as_millis() as u64 =>
            {
                Seed::Backup {
                    backup_id: b.backup_id,
                }
            }
            _ => stream_from(&set, from)?,
        },
    };
    let spec = Spec::Provision {
        set: id,
        instances,
        seed,
        options,
        source,
        make,
    };
    Ok(accepted(start_for_operator(&c, spec, BY).await?))
}

/// Refused when `joining` would newly break one of the set's required placement rules.
fn admit_placement(
    c: &Conductor,
    set: &ReplicaSet,
    joining: &[InstanceId],
) -> Result<(), ApiError> {
    let rules = crate::placement::rules_of(c, &set.id)?;
    let before = crate::placement::of_set(c, set);
    let mut after = before.clone();
    after.extend(
        joining
            .iter()
            .filter(|i| !before.iter().any(|(b, _)| b == *i))
            .map(|i| (i.clone(), crate::placement::location(c, i))),
    );
    crate::decide::placement::admit(&rules, &before, &after)
        .map(|_| ())
        .map_err(|refused| conflict(format!("set {}: {refused}", set.id)))
}

/// `count` servers from the free pool that keep the set's rules (in `zone` if given),
/// running the master's engine.
pub(super) fn from_pool(
    c: &Conductor,
    set: &ReplicaSet,
    count: u32,
    zone: Option<&str>,
    seed: SeedMethod,
) -> Result<Vec<InstanceId>, ApiError> {
    let pool = PoolRequest::check(c, count, zone, seed)?;
    pool.choose(c, set, count)
        .map_err(|why| conflict(format!("set {}: {why}", set.id)))
}

/// A valid request for servers from the pool.
struct PoolRequest<'a> {
    zone: Option<&'a str>,
}

impl<'a> PoolRequest<'a> {
    /// Refused when `count`, `zone` or `seed` cannot make fresh replicas.
    fn check(
        c: &Conductor,
        count: u32,
        zone: Option<&'a str>,
        seed: SeedMethod,
    ) -> Result<PoolRequest<'a>, ApiError> {
        if !(1..=64).contains(&count) {
            return Err(bad_request("count must be between 1 and 64"));
        }
        if seed == SeedMethod::None {
            return Err(bad_request(
                "servers from the pool are fresh: give a seed method (stream, backup or auto)",
            ));
        }
        if let Some(z) = zone {
            let zones = &c.settings.zones;
            let reported = c.registry.list().iter().any(|r| r.zone == z);
            if zones.zone(z).is_none() && !(zones.zones.is_empty() && reported) {
                return Err(not_found(format!(
                    "no zone {z:?} (configured: {})",
                    zones.names()
                )));
            }
        }
        Ok(PoolRequest { zone })
    }

    /// `count` servers of the pool, or why the pool has not got them.
    fn choose(
        &self,
        c: &Conductor,
        set: &ReplicaSet,
        count: u32,
    ) -> Result<Vec<InstanceId>, String> {
        let engine = c.registry.report(&set.master).map(|r| r.engine);
        let free: Vec<crate::decide::placement::Free> = c
            .store
            .pool()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|(i, _)| {
                let r = c.registry.report(i);
                // Only servers whose agents are here now, with the master's engine.
                r.is_some_and(|r| engine.is_none_or(|e| r.engine == e))
            })
            .map(|(instance, _)| crate::decide::placement::Free {
                location: crate::placement::location(c, &instance),
                instance,
            })
            .collect();
        let rules = crate::placement::rules_of(c, &set.id).map_err(|e| e.to_string())?;
        crate::decide::placement::choose(
            &rules,
            &crate::placement::of_set(c, set),
            &free,
            count as usize,
            self.zone,
        )
    }
}

/// As [`from_pool`], and when the pool has fewer than `count` servers the set's rules
/// allow and a provisioner is configured: the servers the pool has, and how many more
/// the provisioner is to start.
fn from_pool_or_provisioner(
    c: &Conductor,
    set: &ReplicaSet,
    count: u32,
    zone: Option<&str>,
    seed: SeedMethod,
) -> Result<(Vec<InstanceId>, Option<MakeServers>), ApiError> {
    let pool = PoolRequest::check(c, count, zone, seed)?;
    let short = match pool.choose(c, set, count) {
        Ok(all) => return Ok((all, None)),
        Err(why) => conflict(format!("set {}: {why}", set.id)),
    };
    if c.settings.provisioner.is_none() {
        return Err(short);
    }
    // The most the pool can give; the provisioner starts the rest.
    let taken = (1..count)
        .rev()
        .find_map(|n| pool.choose(c, set, n).ok())
        .unwrap_or_default();
    let make = MakeServers {
        count: count - taken.len() as u32,
        zone: zone.map(str::to_owned),
    };
    Ok((taken, Some(make)))
}

/// A cascaded replica's source: a replicating member whose stream is the whole set's
/// (not paused, delayed or filtered: a replica under it would inherit that).
fn cascade_source(set: &ReplicaSet, source: &InstanceId) -> Result<InstanceId, ApiError> {
    let Some(m) = set.member(source) else {
        return Err(bad_request(format!(
            "{source} is not a member of set {}: a replica's source is the master or one \
             of its replicas",
            set.id
        )));
    };
    if !matches!(m.role, IntendedRole::Master | IntendedRole::Replica) {
        return Err(bad_request(format!(
            "{source} is {} in set {}: it cannot be a source",
            m.role.as_str(),
            set.id
        )));
    }
    if let Some(why) = m.options.never_promoted() {
        return Err(bad_request(format!(
            "{source} cannot be a source: it is {why}, and a replica under it would be too"
        )));
    }
    Ok(source.clone())
}

fn stream_from(set: &ReplicaSet, from: Option<InstanceId>) -> Result<Seed, ApiError> {
    let from = from.unwrap_or_else(|| set.master.clone());
    if from != set.master && !set.replicas().any(|r| r == &from) {
        return Err(bad_request(format!(
            "{from} is not a member of set {}; a copy comes from the master or a replica",
            set.id
        )));
    }
    Ok(Seed::Stream { from })
}

/// The newest recorded backup of any member of `set`.
fn newest_backup(
    c: &Conductor,
    set: &ReplicaSet,
) -> Result<Option<tandem_proto::BackupInfo>, ApiError> {
    let members: Vec<&InstanceId> = std::iter::once(&set.master).chain(set.replicas()).collect();
    Ok(c.store
        .backups(None)?
        .into_iter()
        .find(|b| members.contains(&&b.instance)))
}

fn recorded_backup(
    c: &Conductor,
    set: &ReplicaSet,
    backup_id: &BackupId,
) -> Result<BackupId, ApiError> {
    let b = c
        .store
        .backups(None)?
        .into_iter()
        .find(|b| &b.backup_id == backup_id)
        .ok_or_else(|| not_found(format!("no backup {backup_id} is recorded")))?;
    if b.instance != set.master && !set.replicas().any(|r| r == &b.instance) {
        return Err(bad_request(format!(
            "backup {backup_id} is of {}, which is not a member of set {}",
            b.instance, set.id
        )));
    }
    Ok(b.backup_id)
}

#[utoipa::path(delete, path = "/v1/sets/{id}/replicas/{instance}", tag = "sets", params(("id" = String, Path), ("instance" = String, Path)), responses((status = 202, body = WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn detach_replica(
    State(c): State<Arc<Conductor>>,
    Path((id, instance)): Path<(String, String)>,
) -> Accepted {
    let id = parse_set(&id)?;
    let instance = parse_id(&instance)?;
    let set = existing(&c, &id)?;
    if !set.replicas().any(|r| r == &instance) {
        return Err(bad_request(format!(
            "{instance} is not a replica of set {id}"
        )));
    }
    let under: Vec<String> = set.replicas_of(&instance).map(|r| r.to_string()).collect();
    if !under.is_empty() {
        return Err(bad_request(format!(
            "{instance} is the source of {}: detach them first, or add them again under \
             another member",
            under.join(", ")
        )));
    }
    let spec = Spec::Detach { set: id, instance };
    Ok(accepted(start_for_operator(&c, spec, BY).await?))
}

#[utoipa::path(post, path = "/v1/sets/{id}/switchover", tag = "sets", params(("id" = String, Path)), request_body = Switchover, responses((status = 202, body = WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "another workflow is active on the set", body = ErrorBody)))]
pub async fn switchover(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: JsonBody<Switchover>,
) -> Accepted {
    let id = parse_set(&id)?;
    let req = body(b, r#"{"candidate": "<instance>"}"#)?;
    let set = existing(&c, &id)?;
    replica_of(&set, &req.candidate)?;
    super::pair::check_switch(&c, &set, &req.candidate)?;
    if let Some(why) = set
        .members
        .iter()
        .find(|m| m.instance == req.candidate)
        .and_then(|m| m.options.never_promoted())
    {
        return Err(bad_request(format!(
            "{} is never promoted: {why}; resume it or catch it up first \
             (`tandem replica resume|catch-up {id} {}`)",
            req.candidate, req.candidate
        )));
    }
    valid_catch_up(req.catch_up_timeout_ms)?;
    // The old master and the epoch are fixed when the request is accepted, so that a
    // resumed workflow knows where it started.
    let spec = Spec::Switchover {
        set: id,
        candidate: req.candidate,
        from: set.master,
        epoch: set.epoch,
        catch_up_timeout_ms: req.catch_up_timeout_ms,
    };
    Ok(accepted(start_for_operator(&c, spec, BY).await?))
}

/// A switchover's catch-up time limit, when one is asked for.
pub(super) fn valid_catch_up(ms: Option<u64>) -> Result<(), ApiError> {
    match ms {
        Some(ms) if !(100..=3_600_000).contains(&ms) => Err(bad_request(
            "catch_up_timeout_ms must be between 100 and 3600000",
        )),
        _ => Ok(()),
    }
}

/// Manual failover (Trove's eject): for a master that is gone. A healthy master is
/// refused (use a switchover, which loses nothing) unless `force`.
#[utoipa::path(post, path = "/v1/sets/{id}/failover", tag = "sets", params(("id" = String, Path)), request_body = Failover, responses((status = 202, body = WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "the master is healthy, or another workflow is active on the set", body = ErrorBody)))]
pub async fn failover(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: JsonBody<Failover>,
) -> Accepted {
    let id = parse_set(&id)?;
    let req = body(b, r#"{"candidate"?: "<instance>", "force"?: true}"#)?;
    let set = existing(&c, &id)?;
    if let Some(candidate) = &req.candidate {
        replica_of(&set, candidate)?;
    }
    if !req.force {
        let verdict = c.failover_watch.verdict(&id);
        if matches!(verdict, None | Some(Verdict::Healthy)) {
            return Err(conflict(format!(
                "the master {} of set {id} is healthy: use a switchover (`tandem promote`), \
                 which loses nothing, or --force",
                set.master
            )));
        }
    }
    let spec = Spec::Failover {
        set: id,
        failed: set.master,
        candidate: req.candidate,
        force: req.force,
        automatic: false,
        reason: None,
        site: false,
    };
    Ok(accepted(start_for_operator(&c, spec, BY).await?))
}

/// Semi-synchronous replication on or off for a running set: recorded, then brought
/// to the engines by a workflow.
#[utoipa::path(put, path = "/v1/sets/{id}/semi-sync", tag = "sets", params(("id" = String, Path)), request_body = SemiSyncRequest, responses((status = 202, body = WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn semi_sync(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: JsonBody<SemiSyncRequest>,
) -> Accepted {
    let id = parse_set(&id)?;
    let req = body(b, r#"{"enabled": true|false}"#)?;
    existing(&c, &id)?;
    let mut state = c.store.failover_state(&id)?;
    let before = state.semi_sync;
    state.semi_sync = req.enabled;
    c.store.set_failover_state(&id, &state)?;
    let spec = Spec::SemiSync {
        set: id.clone(),
        on: req.enabled,
    };
    match start_for_operator(&c, spec, BY).await {
        Ok(row) => Ok(accepted(row)),
        Err(e) => {
            // Busy: the wish is not recorded either.
            state.semi_sync = before;
            c.store.set_failover_state(&id, &state)?;
            Err(e.into())
        }
    }
}

/// `pause` / `resume` automatic failover of a set, or `ack` (acknowledge) an automatic
/// failover held back by the anti-flapping window, which lets it go ahead.
#[utoipa::path(post, path = "/v1/sets/{id}/failover/{action}", tag = "sets", params(("id" = String, Path), ("action" = FailoverAction, Path)), responses((status = 200, body = FailoverState), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn failover_control(
    State(c): State<Arc<Conductor>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<FailoverState>, ApiError> {
    let id = parse_set(&id)?;
    let action: FailoverAction = action
        .parse()
        .map_err(|e| bad_request(format!("failover action {e}")))?;
    existing(&c, &id)?;
    let mut state = c.store.failover_state(&id)?;
    match action {
        FailoverAction::Pause => state.paused = true,
        FailoverAction::Resume => state.paused = false,
        FailoverAction::Ack => {
            if state.blocked.is_none() && state.last_automatic.is_none() {
                return Err(bad_request(format!(
                    "set {id} has no automatic failover to acknowledge"
                )));
            }
            // The window starts again from the next failover.
            state.blocked = None;
            state.last_automatic = None;
        }
    }
    c.store.set_failover_state(&id, &state)?;
    tracing::warn!(set = %id, %action, "failover control");
    Ok(Json(state))
}
