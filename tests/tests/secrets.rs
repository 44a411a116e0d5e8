//! No secret crosses the bus or rests in clear: replication passwords are sealed by the
//! master to the replica, seed tokens by the conductor to the source and the target.
//! An eavesdropper with the broker's trace (the firehose) records every message of a
//! set built with a streamed seed and an attach; the real secrets (read back from the
//! replicas' engines and derived as the conductor derives them) are then looked for in
//! what it saw, in the conductor's store files and in the agents' state files.

use std::path::Path;

use tandem_api::{Seed, WorkflowRow, WorkflowSpec};
use tandem_e2e::capture::Capture;
use tandem_e2e::Cluster;
use tandem_proto::InstanceId;

/// The password a replica logs in to its source with, as its engine keeps it
/// (`master.info`: line 6).
fn replication_password(c: &Cluster, replica: &str) -> String {
    let info = std::fs::read_to_string(c.db(replica).datadir().join("master.info")).unwrap();
    let password = info.lines().nth(5).unwrap().to_owned();
    assert!(password.len() >= 16, "{replica}'s master.info: {info}");
    password
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn captured_bus_traffic_store_and_state_files_hold_no_replication_password_or_seed_token() {
    let c = Cluster::start(3);
    let capture = Capture::start(&c.broker).unwrap();
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--seed", "stream", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-3", "--wait"]);
    c.converged("s1");
    c.write_and_see_everywhere("s1", "db-1", 1);
    let traced = capture.finish();

    // What the eavesdropper saw includes the commands and replies that carried the
    // secrets, so a secret in clear would have been seen.
    let saw = |what: &str| traced.iter().any(|t| t.shows(what));
    for what in [
        "create_replication_user",
        "attach_to_source",
        "offer_seed",
        "seed_from",
        "credentials",
        "amq.rabbitmq.reply-to",
    ] {
        assert!(saw(what), "the trace never showed {what:?}");
    }

    let mut secrets = vec![
        (
            "db-2's replication password",
            replication_password(&c, "db-2"),
        ),
        (
            "db-3's replication password",
            replication_password(&c, "db-3"),
        ),
    ];
    let workflows: Vec<WorkflowRow> = c.cli_json(&["workflow", "list"]);
    let seeded = workflows
        .iter()
        .find(|w| {
            matches!(
                &w.params,
                WorkflowSpec::Provision {
                    seed: Seed::Stream { .. },
                    ..
                }
            )
        })
        .unwrap_or_else(|| panic!("no streamed provision among {workflows:#?}"));
    let token = tandem_conductor::workflow::provision::seed_token(
        *tandem_testkit::conductor_secret(),
        &seeded.id,
        &InstanceId::new("db-2").unwrap(),
    );
    secrets.push(("db-2's seed token", token.expose().to_owned()));

    let at_rest: Vec<(String, Vec<u8>)> = files(&c.conductor.data_dir())
        .into_iter()
        .chain(c.nodes.iter().flat_map(|n| files(&n.agent.state_dir())))
        .collect();
    assert!(
        at_rest.iter().any(|(name, _)| name.ends_with("tandem.db")),
        "the conductor's store is among the files"
    );
    assert!(
        at_rest.iter().any(|(name, _)| name.ends_with("state.json")),
        "the agents' state files are among the files"
    );
    for (what, secret) in &secrets {
        // In clear, or merely hex-encoded.
        for form in [secret.clone(), hex_of(secret)] {
            let shown: Vec<&str> = traced
                .iter()
                .filter(|t| t.shows(&form))
                .map(|t| t.routing_key.as_str())
                .collect();
            assert!(
                shown.is_empty(),
                "{what} crossed the bus in clear: {shown:?}"
            );
            let stored: Vec<&str> = at_rest
                .iter()
                .filter(|(_, bytes)| holds(bytes, &form))
                .map(|(name, _)| name.as_str())
                .collect();
            assert!(stored.is_empty(), "{what} rests in clear in {stored:?}");
        }
    }
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
