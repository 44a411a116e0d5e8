//! `tandem instance`: which key speaks for which instance (enrolment).

use std::io::Write;

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use crate::{instance_id, Client};

#[derive(Subcommand)]
pub enum InstanceCmd {
    /// Enrol an instance: with `--key`, pin its agent's public key (`tandem-agent
    /// public-key` prints it); without, print the one-time token for the agent's
    /// `broker.enrolment_token`, with which it enrols itself on its first report.
    Enroll {
        instance: String,
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
    },
    /// Forget an instance's key (a rebuilt VM, a compromised key): nothing naming it is
    /// believed until it enrols again, and its earlier token no longer works.
    Rekey { instance: String },
    /// Every enrolled instance and its key.
    Keys,
}

pub fn run(client: &Client, cmd: InstanceCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    let v: Value = match cmd {
        InstanceCmd::Enroll { instance, key } => {
            instance_id(&instance)?;
            let body = match key {
                Some(k) => serde_json::json!({ "key": k }),
                None => serde_json::json!({}),
            };
            let v: Value = client.post(&format!("/v1/instances/{instance}/enrolment"), &body)?;
            if !json {
                if let Some(user) = v["broker_user"].as_str() {
                    writeln!(
                        out,
                        "broker user for {instance}: {user} (the agent's broker.user; its \
                         password derives from the token below)"
                    )?;
                }
                match v["token"].as_str() {
                    Some(token) => writeln!(
                        out,
                        "enrolment token for {instance} (put it in the agent's \
                         broker.enrolment_token; it enrols one key, once):\n{token}"
                    )?,
                    None => writeln!(
                        out,
                        "{instance} enrolled with key {}",
                        v["key"].as_str().unwrap_or("?")
                    )?,
                }
                return Ok(());
            }
            v
        }
        InstanceCmd::Rekey { instance } => {
            instance_id(&instance)?;
            let v: Value = client.delete(&format!("/v1/instances/{instance}/enrolment"))?;
            if !json {
                writeln!(
                    out,
                    "{instance} re-keyed (generation {}): nothing naming it is believed until \
                     it enrols again (`tandem instance enroll {instance}`)",
                    v["generation"]
                )?;
                return Ok(());
            }
            v
        }
        InstanceCmd::Keys => {
            let v: Value = client.get("/v1/enrolments")?;
            if !json {
                for e in v.as_array().into_iter().flatten() {
                    writeln!(
                        out,
                        "{:<24} {}  generation {}",
                        e["instance"].as_str().unwrap_or("?"),
                        e["key"].as_str().unwrap_or("(not enrolled)"),
                        e["generation"]
                    )?;
                }
                return Ok(());
            }
            v
        }
    };
    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    Ok(())
}
