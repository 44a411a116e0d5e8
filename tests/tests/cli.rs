//! Agent, conductor and CLI as separate processes, on the real broker and a real engine.

use std::time::{Duration, Instant};

use tandem_api::{ApiRequest, InstanceView};
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

/// A plain HTTP/1.0 request, so that the test does not share the CLI's client:
/// (status, body). `token` goes in `Authorization: Bearer`.
fn raw_http(
    base: &str,
    token: Option<&str>,
    content_type: &str,
    (method, path, body): (&str, &str, &str),
) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// A JSON request with the conductor's operator token.
fn http(conductor: &ConductorProcess, method: &str, path: &str, body: &str) -> (u16, String) {
    raw_http(
        &conductor.url,
        Some(&conductor.token()),
        "application/json",
        (method, path, body),
    )
}

fn http_get(conductor: &ConductorProcess, path: &str) -> String {
    let (code, body) = http(conductor, "GET", path, "");
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
        err.contains("instance db-404 is unknown here") && err.contains("enroll db-404"),
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
        let (code, answer) = http(&conductor, method, path, body);
        assert_eq!(code, 400, "{method} {path} {body}: {answer}");
        assert!(answer.contains(expected), "{method} {path}: {answer}");
        assert!(answer.contains("\"kind\":\"bad_request\""), "{answer}");
    }
    assert_eq!(http(&conductor, "GET", "/v1/sets", "").1, "[]");
    assert_eq!(http(&conductor, "GET", "/v1/nowhere", "").0, 404);

    // The API documents itself.
    let doc = http_get(&conductor, "/v1/openapi.json");
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["info"]["title"], "Tandem conductor API");
    assert!(doc["paths"]["/v1/sets/{id}/switchover"]["post"].is_object());

    let (ok, out, _) = conductor.cli(&["status", "--json"]);
    assert!(ok);
    let v: Vec<InstanceView> = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0].id.as_str(), "db-1");
    assert_eq!(v[0].observed.writable, Some(false));
    assert_eq!(v[0].observed.replicates_from, None);
    assert_eq!(v[0].status.engine, tandem_proto::EngineKind::Mariadb);
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
        let v: Vec<InstanceView> = serde_json::from_str(&out).ok()?;
        (v.first()?.status.health == tandem_proto::Health::Stopping).then_some(())
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

#[test]
fn the_api_needs_a_token_of_the_right_role_and_json_for_changes() {
    let broker = Broker::new().unwrap();
    let conductor = ConductorProcess::start(broker.uri()).unwrap();
    eventually(
        Duration::from_secs(10),
        "the operator token written",
        || (!conductor.token().is_empty()).then_some(()),
    );
    let url = conductor.url.clone();
    let reader = conductor
        .run_with_config(&["token", "create", "viewer", "--role", "reader"])
        .unwrap();
    let admin = conductor.token();
    // A change that needs no agent: pinning a key for db-1.
    let body = format!("{{\"key\": \"{}\"}}", "ab".repeat(32));
    let put = ("POST", "/v1/instances/db-1/enrolment", body.as_str());
    let pause = ("POST", "/v1/sets/s1/failover/pause", "");

    // Health and the API's description are open; everything else needs a known token.
    assert_eq!(
        raw_http(&url, None, "application/json", ("GET", "/v1/health", "")).0,
        200
    );
    let (code, doc) = raw_http(
        &url,
        None,
        "application/json",
        ("GET", "/v1/openapi.json", ""),
    );
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "{doc}"
    );
    for (token, request) in [
        (None, ("GET", "/v1/sets", "")),
        (None, put),
        (Some("tdm_made_up"), ("GET", "/v1/sets", "")),
        (Some("tdm_made_up"), put),
    ] {
        let (code, body) = raw_http(&url, token, "application/json", request);
        assert_eq!(code, 401, "{request:?} with {token:?}: {body}");
        assert!(body.contains("\"kind\":\"unauthorized\""), "{body}");
    }
    // A reader reads, and may change nothing.
    assert_eq!(
        raw_http(
            &url,
            Some(&reader),
            "application/json",
            ("GET", "/v1/sets", "")
        )
        .0,
        200
    );
    assert_eq!(
        raw_http(
            &url,
            Some(&reader),
            "application/json",
            ("GET", "/v1/audit", "")
        )
        .0,
        200
    );
    for request in [put, pause] {
        let (code, body) = raw_http(&url, Some(&reader), "application/json", request);
        assert_eq!(code, 403, "{request:?}: {body}");
        assert!(body.contains("operator"), "{body}");
    }
    // A form post (what a hostile web page can make a browser send) is refused unread,
    // even with an operator's token.
    for content_type in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        for request in [put, pause] {
            let (code, body) = raw_http(&url, Some(&admin), content_type, request);
            assert_eq!(code, 415, "{content_type} {request:?}: {body}");
        }
    }
    assert_eq!(
        raw_http(
            &url,
            Some(&admin),
            "application/json",
            ("GET", "/v1/enrolments", "")
        )
        .1,
        "[]",
        "a refused request changed something"
    );
    // The operator changes; the audit log names who asked, refused attempts included.
    assert_eq!(raw_http(&url, Some(&admin), "application/json", put).0, 200);
    let (ok, out, err) = conductor.cli(&["--json", "audit", "--requests"]);
    assert!(ok, "{err}");
    let audit: Vec<ApiRequest> = serde_json::from_str(&out).unwrap();
    let seen = |who: &str, status: u16| {
        audit
            .iter()
            .any(|r| r.who == who && r.status == status && r.method == "POST")
    };
    assert!(seen("admin", 200), "{audit:?}");
    assert!(seen("viewer", 403), "{audit:?}");
    assert!(seen("(no valid token)", 401), "{audit:?}");
    assert!(seen("admin", 415), "{audit:?}");
    assert!(
        !audit.iter().any(|r| r.method == "GET"),
        "reads are not changes: {audit:?}"
    );

    // The CLI takes its token from the environment; a reader's is refused a change with
    // a message that says what is needed.
    let out = conductor
        .cli_command()
        .env("TANDEM_TOKEN", &reader)
        .args(["metadata", "set", "db-1", "owner", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("operator"),
        "{out:?}"
    );
    // A revoked token is refused.
    conductor
        .run_with_config(&["token", "revoke", "viewer"])
        .unwrap();
    assert_eq!(
        raw_http(
            &url,
            Some(&reader),
            "application/json",
            ("GET", "/v1/sets", "")
        )
        .0,
        401
    );
}

#[test]
fn the_api_serves_https_and_the_cli_verifies_its_certificate() {
    let broker = Broker::new().unwrap();
    let ca = tandem_testkit::TestCa::new("tandem-api-ca").unwrap();
    let issued = ca.issue("conductor").unwrap();
    let conductor = ConductorProcess::start_with(
        broker.uri(),
        &[
            (
                "TANDEM_CONDUCTOR_TLS_CERT_FILE".into(),
                issued.cert.display().to_string(),
            ),
            (
                "TANDEM_CONDUCTOR_TLS_KEY_FILE".into(),
                issued.key.display().to_string(),
            ),
        ],
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the operator token written",
        || (!conductor.token().is_empty()).then_some(()),
    );
    let https = conductor.url.replace("http://", "https://");
    let run = |url: &str, ca: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(binary("tandem"));
        cmd.args(["--conductor", url, "set", "list"])
            .env("TANDEM_TOKEN_FILE", conductor.token_file())
            .env_remove("TANDEM_CA_FILE");
        if let Some(ca) = ca {
            cmd.env("TANDEM_CA_FILE", ca);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // With the CA the certificate chains to: served.
    let (ok, err) = run(&https, Some(ca.ca_file()));
    assert!(ok, "{err}");
    // Without it, the certificate is not trusted; plain HTTP is not served at all.
    let (ok, err) = run(&https, None);
    assert!(!ok && err.to_lowercase().contains("certificate"), "{err}");
    let (ok, err) = run(&conductor.url, Some(ca.ca_file()));
    assert!(!ok, "plain HTTP answered: {err}");
}
