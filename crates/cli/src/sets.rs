//! `tandem topology`, `set`, `replica`, `promote` and `failover`: replica sets and the
//! workflows that change them.

use std::io::Write;

use anyhow::Result;
use tandem_api::client::Client;
use tandem_api::{
    AddReplica, CreateSet, DelayReplica, Failover, FailoverAction, FilterReplica, PauseReplica,
    Switchover,
};

use crate::workflows::{follow, Progress};
use crate::{instance_id, print, render, DrCmd, FailoverCmd, ReplicaCmd, SetCmd};

pub fn dr(client: &Client, cmd: DrCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    match cmd {
        DrCmd::Switch {
            set,
            catch_up_timeout_ms,
            wait,
        } => {
            let row = client.dr_switch(
                &set,
                &tandem_api::DrSwitch {
                    catch_up_timeout_ms,
                },
            )?;
            follow(client, out, json, row, wait)
        }
        DrCmd::Failover { set, force, wait } => {
            let row = client.dr_failover(&set, &tandem_api::DrFailover { force })?;
            follow(client, out, json, row, wait)
        }
    }
}

pub fn topology(client: &Client, json: bool, out: &mut dyn Write) -> Result<()> {
    let sets = client.sets()?;
    print(out, json, &sets, |s| render::topology(s))
}

fn set_id(s: &str) -> Result<tandem_proto::ReplicaSetId> {
    tandem_proto::ReplicaSetId::new(s).map_err(|e| anyhow::anyhow!("invalid replica set id: {e}"))
}

pub fn set(client: &Client, cmd: SetCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    match cmd {
        SetCmd::List {
            instance,
            zone,
            page,
        } => {
            let one_page = page.one_page();
            let query = tandem_api::SetQuery {
                limit: page.limit,
                after: page.after,
                instance,
                zone,
            };
            let sets = if one_page {
                crate::paging::items(client.sets_page(&query)?, "tandem set list")
            } else {
                client.sets_matching(&query)?
            };
            print(out, json, &sets, |sets| {
                sets.iter()
                    .map(|s| {
                        format!(
                            "{}  master {}  epoch {}  members {}\n",
                            s.id,
                            s.master,
                            s.epoch.get(),
                            s.members.len()
                        )
                    })
                    .collect()
            })
        }
        SetCmd::RebuildMaster {
            set,
            from,
            via,
            zone,
            wait,
        } => {
            let row = client.rebuild_master(
                &set,
                &tandem_api::RebuildMaster {
                    from: instance_id(&from)?,
                    via_backup: via == "backup",
                    zone,
                },
            )?;
            let chosen = match &row.params {
                tandem_api::WorkflowSpec::RebuildMaster { instance, .. } => vec![instance.clone()],
                _ => Vec::new(),
            };
            let mut progress = Progress::new(if wait { chosen } else { Vec::new() });
            crate::workflows::started(client, out, json, row, wait, &mut progress)
        }
        SetCmd::SemiSync { set, state, wait } => {
            let row = client.semi_sync(&set, state == "on")?;
            follow(client, out, json, row, wait)
        }
        SetCmd::Create {
            set,
            master,
            semi_sync,
            rules,
            dr,
            dr_replicas,
            ack_from,
            mode,
            peer,
            wait,
        } => {
            let request = CreateSet {
                id: set_id(&set)?,
                master: instance_id(&master)?,
                semi_sync,
                rules,
                dr,
                dr_replicas,
                ack_from,
                mode,
                peer: peer.as_deref().map(instance_id).transpose()?,
            };
            let row = client.create_set(&request)?;
            follow(client, out, json, row, wait)
        }
    }
}

pub fn replica(client: &Client, cmd: ReplicaCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    match cmd {
        ReplicaCmd::Add {
            set,
            instances,
            count,
            zone,
            seed,
            from,
            source,
            backup,
            delay,
            databases,
            wait,
        } => {
            let request = AddReplica {
                delay_s: delay,
                filter: databases.filter(),
                instance: None,
                instances: instances
                    .iter()
                    .map(|i| instance_id(i))
                    .collect::<Result<_>>()?,
                seed: seed.unwrap_or(if count.is_some() {
                    tandem_api::SeedMethod::Auto
                } else {
                    tandem_api::SeedMethod::None
                }),
                from: from.as_deref().map(instance_id).transpose()?,
                source: source.as_deref().map(instance_id).transpose()?,
                backup,
                count,
                zone,
            };
            let row = client.add_replicas(&set, &request)?;
            // Servers from the pool are named by the workflow the conductor started.
            let chosen = match &row.params {
                tandem_api::WorkflowSpec::Provision { instances, .. } => instances.clone(),
                _ => request.instances,
            };
            let mut progress = Progress::new(if wait { chosen } else { Vec::new() });
            crate::workflows::started(client, out, json, row, wait, &mut progress)
        }
        ReplicaCmd::Detach {
            set,
            instance,
            wait,
        } => {
            let row = client.detach(&set, &instance_id(&instance)?)?;
            follow(client, out, json, row, wait)
        }
        ReplicaCmd::Pause {
            set,
            instance,
            until_position,
            force,
            wait,
        } => {
            let request = PauseReplica {
                until: until_position,
                force,
            };
            let row = client.pause_replica(&set, &instance_id(&instance)?, &request)?;
            follow(client, out, json, row, wait)
        }
        ReplicaCmd::Filter {
            set,
            instance,
            databases,
            all,
            wait,
        } => {
            let filter = databases.filter();
            if filter.is_none() && !all {
                anyhow::bail!("name the databases (--databases or --exclude-databases), or --all");
            }
            let request = FilterReplica { filter };
            let row = client.filter_replica(&set, &instance_id(&instance)?, &request)?;
            follow(client, out, json, row, wait)
        }
        ReplicaCmd::Resume {
            set,
            instance,
            wait,
        } => {
            let row = client.resume_replica(&set, &instance_id(&instance)?)?;
            follow(client, out, json, row, wait)
        }
        ReplicaCmd::Delay {
            set,
            instance,
            seconds,
            force,
            wait,
        } => {
            let request = DelayReplica {
                delay_s: seconds,
                force,
            };
            let row = client.delay_replica(&set, &instance_id(&instance)?, &request)?;
            follow(client, out, json, row, wait)
        }
        ReplicaCmd::CatchUp {
            set,
            instance,
            wait,
        } => {
            let request = DelayReplica {
                delay_s: 0,
                force: false,
            };
            let row = client.delay_replica(&set, &instance_id(&instance)?, &request)?;
            follow(client, out, json, row, wait)
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn promote(
    client: &Client,
    set: &str,
    candidate: &str,
    catch_up_timeout_ms: Option<u64>,
    wait: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let request = Switchover {
        candidate: instance_id(candidate)?,
        catch_up_timeout_ms,
    };
    let row = client.switchover(set, &request)?;
    follow(client, out, json, row, wait)
}

pub fn failover(client: &Client, cmd: FailoverCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    let (set, action) = match cmd {
        FailoverCmd::Run {
            set,
            candidate,
            force,
            wait,
        } => {
            let request = Failover {
                candidate: candidate.as_deref().map(instance_id).transpose()?,
                force,
            };
            let row = client.failover(&set, &request)?;
            return follow(client, out, json, row, wait);
        }
        FailoverCmd::Pause { set } => (set, FailoverAction::Pause),
        FailoverCmd::Resume { set } => (set, FailoverAction::Resume),
        FailoverCmd::Ack { set } => (set, FailoverAction::Ack),
    };
    let state = client.failover_control(&set, action)?;
    print(out, json, &state, |state| {
        format!(
            "set {set}: automatic failover {}{}\n",
            if state.paused { "paused" } else { "on" },
            state
                .blocked
                .as_ref()
                .map(|b| format!("; BLOCKED: {b}"))
                .unwrap_or_default()
        )
    })
}
