//! `tandem status`, `ping`, `events` and `metadata`: what the agents report, live.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use tandem_api::client::Client;

use crate::{instance_id, print, render, MetadataCmd};

pub fn status(
    client: &Client,
    query: &tandem_api::InstanceQuery,
    follow: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let one_page = query.limit.is_some() || query.after.is_some();
    let instances = || -> Result<Vec<tandem_api::InstanceView>> {
        Ok(if one_page {
            crate::paging::items(client.instances_page(query)?, "tandem status")
        } else {
            client.instances_matching(query)?
        })
    };
    if !follow {
        let instances = instances()?;
        return print(out, json, &instances, |i| render::status_table(i));
    }
    // Polls the API (it does not read the broker's status topic): a change shows
    // within half a second.
    let mut last = String::new();
    loop {
        let instances = instances()?;
        let text = if json {
            serde_json::to_string(&instances)? + "\n"
        } else {
            render::status_table(&instances)
        };
        if text != last {
            write!(out, "{text}")?;
            if !json {
                writeln!(out)?;
            }
            out.flush()?;
            last = text;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn ping(client: &Client, instance: &str, json: bool, out: &mut dyn Write) -> Result<()> {
    let pong = client.ping(&instance_id(instance)?)?;
    print(out, json, &pong, |p| {
        format!(
            "{}: agent {} ({}), round trip {:.2} ms\n",
            p.instance, p.agent_version, p.protocol, p.round_trip_ms
        )
    })
}

pub fn events(client: &Client, json: bool, out: &mut dyn Write) -> Result<()> {
    for event in client.events()? {
        let (raw, event) = event.context("the event stream")?;
        if json {
            writeln!(out, "{raw}")?;
        } else {
            writeln!(out, "{}", render::event_line(&event, &raw))?;
        }
        out.flush()?;
    }
    Ok(())
}

pub fn metadata(client: &Client, cmd: MetadataCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    match cmd {
        MetadataCmd::List { instance } => {
            let all = client.metadata(&instance_id(&instance)?)?;
            print(out, json, &all, |all| {
                all.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
            })
        }
        MetadataCmd::Get { instance, key } => {
            let entry = client.metadata_get(&instance_id(&instance)?, &key)?;
            print(out, json, &entry, |e| format!("{}\n", e.value))
        }
        MetadataCmd::Set {
            instance,
            key,
            value,
        } => {
            let entry = client.metadata_set(&instance_id(&instance)?, &key, &value)?;
            print(out, json, &entry, |_| String::new())
        }
        MetadataCmd::Delete { instance, key } => {
            let deleted = client.metadata_delete(&instance_id(&instance)?, &key)?;
            print(out, json, &deleted, |_| String::new())
        }
    }
}
