//! Agent, conductor and CLI as separate processes, on the real broker and a real engine.

use std::time::{Duration, Instant};

use tandem_testkit::{binary, AgentProcess, Broker, ConductorProcess, MariaDb, MariaDbOptions};

fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP/1.0 request, so that the test does not share the CLI's client.
/// Returns the status code and the body.
fn http(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

fn http_get(base: &str, path: &str) -> String {
    let (code, body) = http(base, "GET", path, "");
    assert_eq!(code, 200, "{body}");
    body
}

#[test]
fn a_ping_travels_cli_to_conductor_to_agent_and_back_and_status_shows_the_instance() {
    let broker = Broker::new().unwrap();
    let db = MariaDb::start(MariaDbOptions {
        server_id: tandem_agent::server_id_for(&"db-1".parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    let agent =
        AgentProcess::start_mariadb(&binary("tandem-agent"), "db-1", "zone-a", broker.uri(), &db)
            .unwrap();
    let conductor = ConductorProcess::start(broker.uri()).unwrap();

    let out = eventually(Duration::from_secs(30), "a pong", || {
        let (ok, out, _) = conductor.cli(&["ping", "db-1"]);
        ok.then_some(out)
    });
    assert!(out.starts_with("db-1: agent "), "{out}");

    let (ok, out, err) = conductor.cli(&["ping", "db-404"]);
    assert!(!ok);
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("no agent queue is bound for instance db-404"),
        "{err}"
    );

    let (ok, _, err) = conductor.cli(&["ping", "Not An Id"]);
    assert!(!ok);
    assert!(err.contains("contains 'N'"), "{err}");

    let row = eventually(Duration::from_secs(10), "db-1 in the status table", || {
        let (ok, out, _) = conductor.cli(&["status"]);
        ok.then(|| {
            out.lines()
                .find(|l| l.starts_with("db-1"))
                .map(str::to_owned)
        })
        .flatten()
    });
    let cells: Vec<&str> = row.split_whitespace().collect();
    // The agent reports what the engine says; the test kit starts a writable server.
    assert_eq!(db.sql("SELECT @@read_only").unwrap(), "0");
    assert_eq!(
        &cells[..4],
        ["db-1", "zone-a", "standalone", "yes"],
        "{row}"
    );
    db.sql("SET GLOBAL read_only = 1").unwrap();
    eventually(
        Duration::from_secs(5),
        "the table to follow the engine",
        || {
            let (_, out, _) = conductor.cli(&["status"]);
            let row = out.lines().find(|l| l.starts_with("db-1"))?.to_owned();
            (row.split_whitespace().nth(3) == Some("no")).then_some(())
        },
    );

    // Malformed bodies get a 400 that says what was expected, and change nothing.
    for (method, path, body, expected) in [
        (
            "POST",
            "/v1/sets",
            "{nope",
            "expected {\\\"id\\\": \\\"<set>\\\"",
        ),
        ("POST", "/v1/sets", "{\"id\": 7}", "expected"),
        (
            "PUT",
            "/v1/instances/db-1/metadata/k",
            "[1,2]",
            "expected {\\\"value\\\"",
        ),
        (
            "POST",
            "/v1/sets/s1/switchover",
            "{}",
            "expected {\\\"candidate\\\"",
        ),
    ] {
        let (code, answer) = http(&conductor.url, method, path, body);
        assert_eq!(code, 400, "{method} {path} {body}: {answer}");
        assert!(answer.contains(expected), "{method} {path}: {answer}");
        assert!(answer.contains("\"kind\":\"bad_request\""), "{answer}");
    }
    assert_eq!(http(&conductor.url, "GET", "/v1/sets", "").1, "[]");
    assert_eq!(http(&conductor.url, "GET", "/v1/nowhere", "").0, 404);

    // The API documents itself.
    let doc = http_get(&conductor.url, "/v1/openapi.json");
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["info"]["title"], "Tandem conductor API");
    assert!(doc["paths"]["/v1/sets/{id}/switchover"]["post"].is_object());

    let (ok, out, _) = conductor.cli(&["status", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["id"], "db-1");
    assert_eq!(v[0]["observed"]["writable"], false);
    assert_eq!(v[0]["observed"]["replicates_from"], serde_json::Value::Null);
    assert_eq!(v[0]["status"]["engine"], "mariadb");
    drop(agent);
}

#[test]
fn a_stopped_agent_says_so_and_the_cli_reports_an_unreachable_conductor() {
    let broker = Broker::new().unwrap();
    let db = MariaDb::start(MariaDbOptions {
        server_id: tandem_agent::server_id_for(&"db-1".parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    let mut agent =
        AgentProcess::start_mariadb(&binary("tandem-agent"), "db-1", "zone-a", broker.uri(), &db)
            .unwrap();
    let mut conductor = ConductorProcess::start(broker.uri()).unwrap();
    eventually(Duration::from_secs(30), "db-1 reported", || {
        let (ok, out, _) = conductor.cli(&["status"]);
        (ok && out.contains("db-1")).then_some(())
    });
    // SIGTERM: the agent stops taking commands and publishes a last "stopping" report.
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exited with {status}");
    eventually(Duration::from_secs(10), "the stopping report", || {
        let (_, out, _) = conductor.cli(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v[0]["status"]["health"] == "stopping").then_some(())
    });

    conductor.stop();
    let (ok, _, err) = conductor.cli(&["status"]);
    assert!(!ok);
    assert!(
        err.starts_with("tandem: cannot reach the conductor at http://127.0.0.1:"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
