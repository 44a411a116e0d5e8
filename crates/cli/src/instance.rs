//! `tandem instance`: which key speaks for which instance (enrolment).

use std::io::Write;

use anyhow::Result;
use clap::Subcommand;
use tandem_api::client::Client;
use tandem_api::EnrolRequest;

use crate::{instance_id, print};

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
    /// The free pool: servers in no set that `tandem replica add SET --count N` takes.
    #[command(subcommand)]
    Pool(crate::placement::PoolCmd),
}

pub fn run(client: &Client, cmd: InstanceCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    match cmd {
        InstanceCmd::Enroll { instance, key } => {
            let id = instance_id(&instance)?;
            let e = client.enrol(&id, &EnrolRequest { key })?;
            print(out, json, &e, |e| {
                let mut text = String::new();
                if let Some(user) = &e.broker_user {
                    text.push_str(&format!(
                        "broker user for {id}: {user} (the agent's broker.user; its \
                         password derives from the token below)\n"
                    ));
                }
                match &e.token {
                    Some(token) => text.push_str(&format!(
                        "enrolment token for {id} (put it in the agent's \
                         broker.enrolment_token; it enrols one key, once):\n{token}\n"
                    )),
                    None => text.push_str(&format!(
                        "{id} enrolled with key {}\n",
                        e.key.as_deref().unwrap_or("?")
                    )),
                }
                text
            })
        }
        InstanceCmd::Rekey { instance } => {
            let id = instance_id(&instance)?;
            let e = client.rekey(&id)?;
            print(out, json, &e, |e| {
                format!(
                    "{id} re-keyed (generation {}): nothing naming it is believed until \
                     it enrols again (`tandem instance enroll {id}`)\n",
                    e.generation
                )
            })
        }
        InstanceCmd::Pool(cmd) => crate::placement::pool(client, cmd, json, out),
        InstanceCmd::Keys => {
            let all = client.enrolments()?;
            print(out, json, &all, |all| {
                all.iter()
                    .map(|e| {
                        format!(
                            "{:<24} {}  generation {}\n",
                            e.instance,
                            e.key.as_deref().unwrap_or("(not enrolled)"),
                            e.generation
                        )
                    })
                    .collect()
            })
        }
    }
}
