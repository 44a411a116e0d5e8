//! Issue 19's paging and filters, end to end: the list endpoints page with cursors and
//! keep what their filters ask, through the typed client and the CLI, against the real
//! conductor, agents and engines; wrong input gets a 400 that says what is wrong.

use std::collections::BTreeSet;

use tandem_api::{
    AuditQuery, InstanceQuery, InstanceView, JournalEntry, SetQuery, SetView, WorkflowKind,
    WorkflowQuery, WorkflowRow,
};
use tandem_e2e::Cluster;
use tandem_proto::Role;

fn ids(instances: &[InstanceView]) -> Vec<String> {
    instances.iter().map(|i| i.id.to_string()).collect()
}

/// The cursor the CLI said on stderr (`more follow: … --after CURSOR`).
fn cursor_said(stderr: &str) -> Option<String> {
    let line = stderr.lines().find(|l| l.starts_with("more follow:"))?;
    Some(line.rsplit_once("--after ")?.1.trim().to_owned())
}

#[test]
fn lists_page_with_cursors_and_filters_in_the_api_and_the_cli() {
    // s1: db-1 master, db-2 replica; s2: db-3 alone; db-4 standalone.
    let c = Cluster::start(4);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.cli_ok(&["set", "create", "s2", "--master", "db-3", "--wait"]);
    c.converged("s1");
    c.converged("s2");
    let api = c.api();

    // Instances: pages of one, in id order, each cursor the last id; the last page says
    // no more. Together they are the whole list.
    let mut paged = Vec::new();
    let mut query = InstanceQuery {
        limit: Some(1),
        ..Default::default()
    };
    loop {
        let page = api.instances_page(&query).unwrap();
        assert!(page.items.len() <= 1);
        paged.extend(page.items);
        match page.next {
            Some(next) => {
                assert_eq!(Some(&next), paged.last().map(|i| i.id.to_string()).as_ref());
                query.after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(ids(&paged), ["db-1", "db-2", "db-3", "db-4"]);
    assert_eq!(ids(&api.instances().unwrap()), ids(&paged));

    // Filters, alone and together.
    let matching = |q: InstanceQuery| ids(&api.instances_matching(&q).unwrap());
    assert_eq!(
        matching(InstanceQuery {
            set: Some("s1".into()),
            ..Default::default()
        }),
        ["db-1", "db-2"]
    );
    assert_eq!(
        matching(InstanceQuery {
            role: Some(Role::Master),
            ..Default::default()
        }),
        ["db-1", "db-3"]
    );
    assert_eq!(
        matching(InstanceQuery {
            role: Some(Role::Master),
            set: Some("s2".into()),
            ..Default::default()
        }),
        ["db-3"]
    );
    assert!(matching(InstanceQuery {
        zone: Some("nowhere".into()),
        ..Default::default()
    })
    .is_empty());

    // The CLI: one page on stdout, the next page's command on stderr.
    let (ok, out, err) = c.cli(&["--json", "status", "--limit", "3"]);
    assert!(ok, "{err}");
    let first: Vec<InstanceView> = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&first), ["db-1", "db-2", "db-3"]);
    let after = cursor_said(&err).unwrap_or_else(|| panic!("no cursor said: {err}"));
    let (ok, out, err) = c.cli(&["--json", "status", "--limit", "3", "--after", &after]);
    assert!(ok, "{err}");
    let rest: Vec<InstanceView> = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&rest), ["db-4"]);
    assert_eq!(cursor_said(&err), None, "the last page says no more: {err}");
    let replicas: Vec<InstanceView> = c.cli_json(&["status", "--role", "replica"]);
    assert_eq!(ids(&replicas), ["db-2"]);

    // Sets.
    let sets: Vec<SetView> = c.cli_json(&["set", "list", "--instance", "db-2"]);
    assert_eq!(
        sets.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["s1"]
    );
    let page = api
        .sets_page(&SetQuery {
            limit: Some(1),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.items[0].id.as_str(), "s1");
    let page = api
        .sets_page(&SetQuery {
            limit: Some(1),
            after: page.next,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.items[0].id.as_str(), "s2");
    assert_eq!(page.next, None);

    // Workflows: newest first; paged one at a time they are the same list, no repeats.
    let all: Vec<WorkflowRow> = c.cli_json(&["workflow", "list"]);
    assert!(all.len() >= 3, "{all:?}");
    let mut paged = Vec::new();
    let mut query = WorkflowQuery {
        limit: Some(1),
        ..Default::default()
    };
    loop {
        let page = api.workflows_page(&query).unwrap();
        paged.extend(page.items);
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    let wids = |rows: &[WorkflowRow]| rows.iter().map(|w| w.id.clone()).collect::<Vec<_>>();
    assert_eq!(wids(&paged), wids(&all));
    let of_s2: Vec<WorkflowRow> = c.cli_json(&["workflow", "list", "--set", "s2"]);
    assert!(!of_s2.is_empty() && of_s2.iter().all(|w| w.set_id.as_str() == "s2"));
    let attaches: Vec<WorkflowRow> = c.cli_json(&["workflow", "list", "--kind", "attach"]);
    assert!(!attaches.is_empty() && attaches.iter().all(|w| w.kind == WorkflowKind::Attach));

    // Audit: every command sent to db-2, two a page, is what one page of them holds.
    let to_db2: Vec<JournalEntry> = c.cli_json(&["audit", "--instance", "db-2", "--limit", "1000"]);
    assert!(to_db2.len() >= 2, "{to_db2:?}");
    assert!(to_db2.iter().all(|e| e.target.as_str() == "db-2"));
    let mut paged = BTreeSet::new();
    let mut query = AuditQuery {
        instance: Some("db-2".into()),
        limit: Some(2),
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let page = api.audit_page(&query).unwrap();
        pages += 1;
        for e in page.items {
            assert!(
                paged.insert((e.workflow_id.clone(), e.seq)),
                "an entry came twice"
            );
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged.len(), to_db2.len());
    assert!(pages >= to_db2.len().div_ceil(2));

    // Wrong input: a clear 400, nothing listed.
    for (path, says) in [
        ("/v1/instances?role=boss", "role"),
        ("/v1/instances?limit=many", "limit"),
        ("/v1/workflows?after=nonsense", "not a cursor"),
        ("/v1/audit?after=1~w", "not a cursor"),
        ("/v1/sets?instance=no%20such", "instance"),
    ] {
        let (status, body) = c.conductor.http_get_status(path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    let (ok, _, err) = c.cli(&["status", "--role", "boss"]);
    assert!(
        !ok && err.contains("boss") && err.contains("master"),
        "{err}"
    );
}
