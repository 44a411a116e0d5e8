//! `tandem workflow` and `tandem audit`; following a started workflow to its end, with
//! progress bars for the long operations it runs.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use tandem_api::client::Client;
use tandem_api::{WorkflowRow, WorkflowState};
use tandem_proto::InstanceId;

use crate::{paging, print, render, WorkflowCmd};

pub fn run(client: &Client, cmd: WorkflowCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    match cmd {
        WorkflowCmd::List {
            set,
            kind,
            state,
            page,
        } => {
            let query = tandem_api::WorkflowQuery {
                limit: page.limit,
                after: page.after,
                set,
                kind: paging::word("kind", kind)?,
                state: paging::word("state", state)?,
            };
            let rows = paging::items(client.workflows_page(&query)?, "tandem workflow list");
            print(out, json, &rows, |rows| {
                rows.iter()
                    .map(|w| render::workflow_line(w) + "\n")
                    .collect()
            })
        }
        WorkflowCmd::Cancel { id } => {
            let row = client.cancel_workflow(&id)?;
            print(out, json, &row, |row| {
                format!(
                    "workflow {id} ({}): cancel requested; its long steps stop at their next \
                     safe point (follow it with `tandem workflow show {id}`)\n",
                    row.kind
                )
            })
        }
        WorkflowCmd::Show { id } => {
            let w = client.workflow(&id)?;
            print(out, json, &w, |w| {
                let mut text = render::workflow_line(&w.workflow) + "\n";
                for s in &w.steps {
                    text.push_str(&format!(
                        "  {:>2}. {:<45} {:<8} {:<24} e{:<4} {}\n",
                        s.seq,
                        s.step,
                        s.target,
                        s.command,
                        s.epoch.get(),
                        render::step_result(s)
                    ));
                    // A note is a finding of the workflow (errant positions, the
                    // candidate choice and its exclusions, a failover summary): shown
                    // in full, not only with --json.
                    if s.is_note() {
                        text.push_str(&render::note_lines(s.result.as_ref()));
                    }
                }
                text
            })
        }
    }
}

pub fn audit_requests(client: &Client, json: bool, out: &mut dyn Write) -> Result<()> {
    let entries = client.audit_requests()?;
    print(out, json, &entries, |entries| {
        entries
            .iter()
            .map(|e| {
                format!(
                    "{}  {:<16} {:<6} {} -> {}\n",
                    e.at.0, e.who, e.method, e.path, e.status
                )
            })
            .collect()
    })
}

pub fn audit(
    client: &Client,
    query: &tandem_api::AuditQuery,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let entries = paging::items(client.audit_page(query)?, "tandem audit");
    print(out, json, &entries, |entries| {
        entries
            .iter()
            .map(|e| {
                format!(
                    "{}  {}  {:<24} -> {:<8} e{:<4} {}\n",
                    e.workflow_id,
                    e.message_id,
                    e.command,
                    e.target,
                    e.epoch.get(),
                    render::step_result(e)
                )
            })
            .collect()
    })
}

/// [`started`] for a workflow with nothing to show a progress bar for.
pub fn follow(
    client: &Client,
    out: &mut dyn Write,
    json: bool,
    row: WorkflowRow,
    wait: bool,
) -> Result<()> {
    started(client, out, json, row, wait, &mut Progress::new(Vec::new()))
}

/// Prints the accepted workflow; with `wait`, follows it to its end and fails unless it
/// is done.
pub fn started(
    client: &Client,
    out: &mut dyn Write,
    json: bool,
    row: WorkflowRow,
    wait: bool,
    progress: &mut Progress,
) -> Result<()> {
    let id = row.id.clone();
    if !wait {
        return print(out, json, &row, |row| {
            format!("workflow {id} started ({})\n", row.kind)
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        progress.update(client);
        let w = client.workflow(&id)?;
        let state = w.workflow.state;
        if !state.is_active() {
            progress.finish();
            print(out, json, &w, |w| render::workflow_line(&w.workflow) + "\n")?;
            anyhow::ensure!(
                state == WorkflowState::Done,
                "workflow {id} {state}: {}",
                w.workflow.error.as_deref().unwrap_or("no reason given")
            );
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "workflow {id} still {state} after 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Progress bars (on stderr, when it is a terminal) for the long operations running on
/// some instances: bytes done of total, rate and ETA, from their status reports.
pub struct Progress {
    instances: Vec<InstanceId>,
    multi: indicatif::MultiProgress,
    bars: std::collections::HashMap<InstanceId, indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(instances: Vec<InstanceId>) -> Self {
        Progress {
            instances,
            multi: indicatif::MultiProgress::new(),
            bars: Default::default(),
        }
    }

    pub fn update(&mut self, client: &Client) {
        for i in &self.instances {
            let Ok(view) = client.instance(i) else {
                continue;
            };
            let Some(op) = view.status.operations.first() else {
                continue;
            };
            let bar = self.bars.entry(i.clone()).or_insert_with(|| {
                let bar = self.multi.add(indicatif::ProgressBar::new(0));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:>10} {msg:<10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(i.to_string());
                bar
            });
            bar.set_message(op.phase.clone());
            if let Some(total) = op.bytes_total {
                bar.set_length(total);
            }
            bar.set_position(op.bytes_done);
        }
    }

    pub fn finish(&mut self) {
        for bar in self.bars.values() {
            bar.finish_and_clear();
        }
    }
}
