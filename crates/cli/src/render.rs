//! Answers of the API as lines for people.

use tandem_api::{
    ApiEvent, BackupRunView, FailoverView, JournalEntry, MemberView, SetView, StepOutcome,
    WorkflowRow,
};
use tandem_proto::{BackupInfo, BackupKind, FailsafeState, InstanceId, Position, StatusReport};

/// A value's serde spelling (`fallen_back`), for enums that print as their word.
pub fn word<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// A position's text alone (`0-1-5`, `16/B374D848`), as the tables show it.
pub fn position(p: Option<&Position>) -> String {
    match p.map(serde_json::to_value) {
        Some(Ok(serde_json::Value::Object(m))) => m
            .values()
            .next()
            .and_then(|v| v.as_str())
            .unwrap_or("-")
            .to_owned(),
        Some(Ok(serde_json::Value::String(s))) => s,
        _ => "-".into(),
    }
}

/// What an operator must act on about one instance, one line each: diverged, fencing
/// hazards, refused commands, settings awaiting a restart.
pub fn needs_attention(
    diverged: Option<&str>,
    hazards: &[String],
    refused_commands: u64,
    restart: &[String],
) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(why) = diverged {
        lines.push(format!("DIVERGED: {why}"));
    }
    if !hazards.is_empty() {
        lines.push(format!(
            "FENCING HAZARD: {} can write while the server is read-only",
            hazards.join(", ")
        ));
    }
    if refused_commands > 0 {
        lines.push(format!(
            "REFUSED COMMANDS: {refused_commands} unsigned, forged or foreign-key commands \
             dead-lettered unread (someone with broker access is trying)"
        ));
    }
    if !restart.is_empty() {
        lines.push(format!("RESTART NEEDED: {}", restart.join("; ")));
    }
    lines
}

/// A master's failsafe in a line: whose promises carry it through a broker outage,
/// and how often they did. Nothing for a replica (its master's line says it).
pub fn failsafe_line(f: Option<&FailsafeState>) -> Option<String> {
    let FailsafeState::Master { peers, held, .. } = f? else {
        return None;
    };
    if peers.is_empty() {
        return None;
    }
    let peers: Vec<&str> = peers.iter().map(InstanceId::as_str).collect();
    Some(format!(
        "failsafe: writes ride out a broker outage on promises from {}{}",
        peers.join(", "),
        if *held > 0 {
            format!(" (lease held by them {held} times)")
        } else {
            String::new()
        }
    ))
}

/// A journaled finding as indented `key: value` lines; lists one item a line.
pub fn note_lines(note: Option<&serde_json::Value>) -> String {
    use serde_json::Value;
    let flat = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "none".to_string(),
        Value::Array(a) if a.iter().all(|x| x.is_array()) => a
            .iter()
            .map(|pair| {
                let parts: Vec<String> = pair
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect();
                parts.join(": ")
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    };
    match note {
        Some(Value::Object(m)) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::Array(items) if !items.is_empty() && !items.iter().all(|x| x.is_array()) => {
                    let mut text = format!("        {k}:\n");
                    for item in items {
                        text.push_str(&format!("          - {}\n", flat(item)));
                    }
                    text
                }
                _ => format!("        {k}: {}\n", flat(v)),
            })
            .collect(),
        None | Some(Value::Null) => String::new(),
        Some(other) => format!("        {}\n", flat(other)),
    }
}

/// A journaled step's result in a word or a line: in flight, ok, or the error.
pub fn step_result(entry: &JournalEntry) -> String {
    match entry.outcome() {
        StepOutcome::InFlight => "in flight".into(),
        StepOutcome::Ok => "ok".into(),
        StepOutcome::Failed(e) => format!("error: {e}"),
    }
}

pub fn event_line(event: &ApiEvent, raw: &str) -> String {
    let or_dash = |i: &Option<InstanceId>| i.as_ref().map_or("-".to_owned(), |i| i.to_string());
    match event {
        ApiEvent::InstanceChanged {
            instance,
            role,
            writable,
            replicates_from,
            health,
            ..
        } => format!(
            "instance {instance}: {} writable={} from={} health={}",
            word(role),
            writable.map_or("null".to_owned(), |w| w.to_string()),
            or_dash(replicates_from),
            word(health)
        ),
        ApiEvent::WorkflowStarted {
            workflow,
            kind,
            set,
            ..
        } => format!("workflow {workflow} started: {kind} on set {set}"),
        ApiEvent::WorkflowStep {
            workflow,
            seq,
            step,
            target,
            ok,
            ..
        } => format!(
            "workflow {workflow} step {seq} {step} on {target}: {}",
            if *ok { "ok" } else { "failed" }
        ),
        ApiEvent::WorkflowEnded {
            workflow,
            state,
            error,
            ..
        } => format!(
            "workflow {workflow} {state}{}",
            error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
        ),
        ApiEvent::MasterVerdict {
            set,
            master,
            verdict,
            ..
        } => format!(
            "set {set}: master {master} {}{}",
            verdict.name(),
            verdict
                .reason()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        ApiEvent::FailoverBlocked { set, reason, .. } => {
            format!("set {set}: FAILOVER BLOCKED: {reason}")
        }
        ApiEvent::RestoreWritesHeld {
            set,
            master,
            restores_in_a_row,
            hold_ms,
            ..
        } => format!(
            "set {set}: {master} fenced itself {restores_in_a_row} times in a row: writes \
             given back in {hold_ms} ms"
        ),
        ApiEvent::Quarantined {
            set,
            instance,
            position,
            master_position,
            ..
        } => format!(
            "set {set}: {instance} QUARANTINED: at {position}, the master was at \
             {master_position} when it was promoted"
        ),
        ApiEvent::Lagged { missed } => format!("(missed {missed} events: this stream fell behind)"),
        other => format!("{}: {raw}", word_of_event(other)),
    }
}

/// An event's tag (`drift`, `instance_enrolled`).
fn word_of_event(e: &ApiEvent) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| v.get("event").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "event".into())
}

pub fn workflow_line(w: &WorkflowRow) -> String {
    let mut line = format!("{}  {}  set {}  {}", w.id, w.kind, w.set_id, w.state);
    if let Some(e) = &w.error {
        line.push_str(&format!(": {e}"));
    }
    line
}

pub fn backup_line(b: &BackupInfo) -> String {
    let kind = match &b.kind {
        BackupKind::Incremental { parent } => format!("incremental of {parent}"),
        other => word_tag(other),
    };
    format!(
        "{}  {}  {}  {} bytes  at {}  {}",
        b.backup_id,
        b.instance,
        kind,
        b.size_bytes,
        position(b.position.as_ref()),
        b.location
    )
}

/// The `kind` tag of an internally tagged value.
fn word_tag<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

pub fn running_line(id: &str, r: &BackupRunView) -> String {
    format!(
        "{id}  {}  {}{}",
        r.instance,
        word(&r.state),
        r.error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    )
}

/// One tree per replica set.
pub fn topology(sets: &[SetView]) -> String {
    let mut text = String::new();
    for s in sets {
        text.push_str(&format!("{} (epoch {})\n", s.id, s.epoch.get()));
        text.push_str(&failover_line(&s.failover));
        text.push_str(&placement_lines(s));
        let member_line = |m: &MemberView| {
            let writable = match m.observed.as_ref().and_then(|o| o.writable) {
                Some(true) => "writable",
                Some(false) => "read-only",
                None => "writable?",
            };
            let lag = m
                .lag_seconds
                .map(|l| format!(" lag {l:.1}s"))
                .unwrap_or_default();
            let drift = if m.drift.is_empty() {
                String::new()
            } else {
                format!("  DRIFT: {}", m.drift.join("; "))
            };
            let mut held = match m.intended.role {
                r @ (tandem_api::IntendedRole::Failed | tandem_api::IntendedRole::Quarantined) => {
                    format!(" {}", r.as_str().to_uppercase())
                }
                _ => String::new(),
            };
            if let Some(semi) = &m.semi_sync {
                held.push_str(&format!(" semi-sync {}", word(semi).replace('_', " ")));
            }
            if m.fenced {
                held.push_str(" FENCED");
            }
            let options = &m.intended.options;
            if options.paused.is_some() {
                let at = match &options.paused {
                    Some(tandem_api::Pause { until: Some(p), .. }) => format!(" at {p}"),
                    _ => String::new(),
                };
                let still = if m.applying == Some(true) {
                    " (applying until then)"
                } else {
                    ""
                };
                held.push_str(&format!(" PAUSED{at}{still}"));
            }
            if let Some(filter) = options.filter.as_ref().or(m.engine_filter.as_ref()) {
                held.push_str(&format!(" FILTERED {filter}"));
            }
            if options.delay_s > 0 || m.engine_delay_s.is_some_and(|d| d > 0) {
                held.push_str(&format!(
                    " DELAYED {} s (engine {})",
                    options.delay_s,
                    m.engine_delay_s
                        .map_or("unknown".to_owned(), |d| format!("{d} s"))
                ));
            }
            for line in needs_attention(
                m.diverged.as_deref(),
                &m.fencing_hazards,
                0,
                &m.restart_needed,
            ) {
                held.push_str(&format!(" {line}"));
            }
            if let Some(line) = failsafe_line(m.failsafe.as_ref()) {
                held.push_str(&format!(" {line}"));
            }
            format!(
                "{} @{} [{} {} {}]{}{} {}{}",
                m.instance,
                crate::placement::place(m.location.as_ref()),
                m.role.as_ref().map_or("unknown".to_owned(), word),
                writable,
                m.health.as_ref().map_or("?".to_owned(), word),
                held,
                lag,
                position(m.position.as_ref()),
                drift
            )
        };
        if let Some(m) = s.members.iter().find(|m| m.instance == s.master) {
            text.push_str(&format!("└─ {}\n", member_line(m)));
        }
        // The tree as intended: each replica under its source, cascades indented
        // further; members under no source (failed, quarantined) last, under the master.
        let under = |parent: Option<&tandem_proto::InstanceId>| -> Vec<&MemberView> {
            s.members
                .iter()
                .filter(|m| m.instance != s.master)
                .filter(|m| match parent {
                    Some(p) => m.intended.replicates_from.as_ref() == Some(p),
                    None => m
                        .intended
                        .replicates_from
                        .as_ref()
                        .is_none_or(|f| !s.members.iter().any(|o| &o.instance == f)),
                })
                .collect()
        };
        let mut rows: Vec<(usize, &MemberView)> = Vec::new();
        fn walk<'a>(
            depth: usize,
            parent: &tandem_proto::InstanceId,
            under: &dyn Fn(Option<&tandem_proto::InstanceId>) -> Vec<&'a MemberView>,
            rows: &mut Vec<(usize, &'a MemberView)>,
        ) {
            for m in under(Some(parent)) {
                if rows.iter().any(|(_, r)| r.instance == m.instance) || depth > 16 {
                    continue;
                }
                rows.push((depth, m));
                walk(depth + 1, &m.instance, under, rows);
            }
        }
        walk(1, &s.master, &under, &mut rows);
        for m in under(None) {
            rows.push((1, m));
        }
        for (i, (depth, m)) in rows.iter().enumerate() {
            let last_sibling = !rows[i + 1..]
                .iter()
                .take_while(|(d, _)| d >= depth)
                .any(|(d, _)| d == depth);
            let branch = if last_sibling { "└─" } else { "├─" };
            text.push_str(&format!(
                "{}{branch} {}\n",
                "   ".repeat(*depth),
                member_line(m)
            ));
        }
    }
    text
}

/// The rules a set keeps, and what it breaks of them.
fn placement_lines(s: &SetView) -> String {
    let rules: Vec<String> = s.rules.iter().map(|r| r.to_string()).collect();
    let mut text = format!("   placement {}\n", rules.join(", "));
    if let Some(dr) = &s.dr {
        let ack: Vec<String> = dr.acknowledging.iter().map(|i| i.to_string()).collect();
        text.push_str(&format!(
            "   dr {}: primary zone {}, DR zone {} (DR source {}); acknowledging: {}{}\n",
            dr.settings.profile,
            dr.settings.primary,
            dr.settings.dr,
            dr.dr_source
                .as_ref()
                .map_or("none".into(), |i| i.to_string()),
            if ack.is_empty() {
                "none".into()
            } else {
                ack.join(", ")
            },
            match dr.zone_safe {
                Some(true) => "; zone-safe: losing the primary zone loses no acknowledged write",
                Some(false) =>
                    "; NOT zone-safe now: no replica outside the master's zone acknowledges",
                None => "",
            }
        ));
    }
    if let Some(p) = &s.pair {
        text.push_str(&format!(
            "   master-master pair: {} (active) {} {} (passive){}\n",
            p.active,
            // Both ways only while the active side replicates its peer (not after a
            // failover, until the old side rejoins).
            match s
                .member(p.active.as_str())
                .and_then(|m| m.intended.replicates_from.as_ref())
            {
                Some(f) if f == &p.passive => "<->",
                _ => "->",
            },
            p.passive,
            p.stray_write.as_ref().map_or(String::new(), |g| format!(
                "; STRAY WRITE on {}: {g} (a switch to it is refused)",
                p.passive
            ))
        ));
    }
    for v in &s.violations {
        let kind = if v.required { "VIOLATED" } else { "violated" };
        text.push_str(&format!("   {kind} {}: {}\n", v.rule_name, v.reason));
    }
    text
}

fn failover_line(f: &FailoverView) -> String {
    let verdict = match &f.verdict {
        None | Some(tandem_api::Verdict::Healthy) => "healthy".to_string(),
        Some(v) => format!("{}: {}", v.name(), v.reason().unwrap_or("")),
    };
    format!(
        "   failover {}; master {}{}\n",
        if f.automatic { "automatic" } else { "paused" },
        verdict,
        f.state
            .blocked
            .as_ref()
            .map(|b| format!("\n   BLOCKED: {b}"))
            .unwrap_or_default()
    )
}

/// The status table: one row per instance, then what needs attention.
pub fn status_table(instances: &[tandem_api::InstanceView]) -> String {
    let mut rows = vec![[
        "INSTANCE", "ZONE", "ROLE", "WRITABLE", "FROM", "TO", "POSITION", "LAG", "HEALTH",
    ]
    .map(String::from)
    .to_vec()];
    for i in instances {
        let s = &i.status;
        let writable = match s.writable {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let lag = s
            .lag
            .as_ref()
            .map(|l| format!("{:.1}s", l.seconds))
            .unwrap_or_else(|| "-".into());
        let to: Vec<&str> = s.replicates_to.iter().map(InstanceId::as_str).collect();
        rows.push(vec![
            i.id.to_string(),
            i.zone.clone(),
            word(&s.role),
            writable.into(),
            s.replicates_from
                .as_ref()
                .map_or("-".to_owned(), |f| f.to_string()),
            if to.is_empty() {
                "-".into()
            } else {
                to.join(",")
            },
            position(s.position.as_ref()),
            lag,
            word(&s.health),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    for i in instances {
        for line in report_attention(&i.status) {
            text.push_str(&format!("{}: {line}\n", i.id));
        }
    }
    text
}

fn report_attention(s: &StatusReport) -> Vec<String> {
    needs_attention(
        s.replication.as_ref().and_then(|r| r.diverged.as_deref()),
        &s.fencing_hazards,
        s.refused_commands,
        &s.restart_needed,
    )
    .into_iter()
    .chain(failsafe_line(s.failsafe.as_ref()))
    .collect()
}
