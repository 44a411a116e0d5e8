//! `tandem zone`, `tandem rule` and `tandem instance pool`: where servers run, the
//! rules a set's placement keeps, and the free servers new replicas come from.

use std::io::Write;

use anyhow::Result;
use clap::Subcommand;
use tandem_api::client::Client;
use tandem_api::{CreateRule, Location, PlacementPolicy, PlacementScope};

use crate::{instance_id, print};

#[derive(Subcommand)]
pub enum ZoneCmd {
    /// The zones offered (and any only agents report), their hosts, and DR profiles.
    List,
}

#[derive(Subcommand)]
pub enum RuleCmd {
    /// Create a placement rule; prints its id.
    Create {
        name: String,
        /// affinity, anti-affinity (required), soft-affinity, soft-anti-affinity
        /// (preferred: allowed, but raised as a violation).
        #[arg(long)]
        policy: PlacementPolicy,
        /// host (an agent's host_id) or zone.
        #[arg(long, default_value = "host")]
        scope: PlacementScope,
        /// Anti-affinity: at most N of a set's servers per host (or zone).
        #[arg(long, value_name = "N", alias = "max-per-zone")]
        max_per_host: Option<u32>,
    },
    List,
    /// Delete a rule no set keeps (by id or name).
    Delete {
        rule: String,
    },
    /// SET keeps these rules too (ids or names); refused when they contradict each
    /// other or the set's servers break a required one.
    Add {
        set: String,
        #[arg(required = true)]
        rules: Vec<String>,
    },
    /// SET no longer keeps RULE.
    Remove {
        set: String,
        rule: String,
    },
}

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Put servers that reported and are in no set in the free pool.
    Add {
        #[arg(required = true)]
        instances: Vec<String>,
    },
    Remove {
        instance: String,
    },
    List,
}

pub fn zone(client: &Client, cmd: ZoneCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    match cmd {
        ZoneCmd::List => {
            let z = client.zones()?;
            print(out, json, &z, |z| {
                let mut text = String::new();
                for zone in &z.zones {
                    let hosts: Vec<String> = zone.hosts.iter().map(|h| h.to_string()).collect();
                    text.push_str(&format!(
                        "{:<16} {:<14} instances {:<3} pooled {:<3} hosts {}{}\n",
                        zone.zone,
                        if zone.configured {
                            "configured"
                        } else {
                            "not configured"
                        },
                        zone.instances,
                        zone.pooled,
                        if hosts.is_empty() {
                            "-".into()
                        } else {
                            hosts.join(",")
                        },
                        zone.description
                            .as_deref()
                            .map(|d| format!("  ({d})"))
                            .unwrap_or_default()
                    ));
                }
                if z.zones.is_empty() {
                    text.push_str("no zones configured or reported\n");
                }
                for p in &z.dr_profiles {
                    text.push_str(&format!(
                        "dr profile {}: {} -> {}\n",
                        p.name, p.primary, p.dr
                    ));
                }
                text
            })
        }
    }
}

pub fn rule(client: &Client, cmd: RuleCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    let rules_text = |rules: &Vec<tandem_api::PlacementRule>| -> String {
        rules.iter().map(|r| format!("{}  {r}\n", r.id)).collect()
    };
    match cmd {
        RuleCmd::Create {
            name,
            policy,
            scope,
            max_per_host,
        } => {
            let rule = client.create_rule(&CreateRule {
                name,
                policy,
                scope,
                max_per_domain: max_per_host,
            })?;
            print(out, json, &rule, |r| format!("{}\n", r.id))
        }
        RuleCmd::List => {
            let rules = client.rules()?;
            print(out, json, &rules, rules_text)
        }
        RuleCmd::Delete { rule } => {
            let d = client.delete_rule(&rule)?;
            print(out, json, &d, |d| format!("deleted {}\n", d.deleted))
        }
        RuleCmd::Add { set, rules } => {
            let kept = client.add_set_rules(&set, rules)?;
            print(out, json, &kept, rules_text)
        }
        RuleCmd::Remove { set, rule } => {
            let kept = client.remove_set_rule(&set, &rule)?;
            print(out, json, &kept, rules_text)
        }
    }
}

/// `zone/host` for a table.
pub fn place(location: Option<&Location>) -> String {
    match location {
        Some(l) => format!(
            "{}/{}",
            l.zone,
            l.host_id.as_ref().map_or("?", |h| h.as_str())
        ),
        None => "?".into(),
    }
}

pub fn pool(client: &Client, cmd: PoolCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    let table = |pool: &Vec<tandem_api::PoolEntry>| -> String {
        if pool.is_empty() {
            return "the pool is empty\n".into();
        }
        pool.iter()
            .map(|p| {
                format!(
                    "{:<24} {:<24} {}\n",
                    p.instance,
                    place(p.location.as_ref()),
                    p.engine.map_or("?".into(), |e| e.to_string())
                )
            })
            .collect()
    };
    match cmd {
        PoolCmd::Add { instances } => {
            let ids = instances
                .iter()
                .map(|i| instance_id(i))
                .collect::<Result<Vec<_>>>()?;
            let pool = client.pool_add(ids)?;
            print(out, json, &pool, table)
        }
        PoolCmd::Remove { instance } => {
            let d = client.pool_remove(&instance_id(&instance)?)?;
            print(out, json, &d, |d| {
                format!("{} taken out of the pool\n", d.deleted)
            })
        }
        PoolCmd::List => {
            let pool = client.pool()?;
            print(out, json, &pool, table)
        }
    }
}
