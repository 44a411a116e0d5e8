//! The agent's durable memory: the highest epoch it has seen, the results of the
//! commands it ran (so a redelivered command is answered, not re-run, also after a
//! restart), the commands redelivered to it without an answer (so one that stops the
//! agent every time it runs is refused after a bound, whatever the queue type), where it
//! replicates from, and its boot count (which orders status reports across restarts).
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory) before a
//! command's reply is sent: a reply the conductor saw is always backed by a record.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tandem_proto::{Epoch, MessageId, Reply, SourceEndpoint};

/// How many command results are kept for answering repeats. The conductor re-sends
/// within minutes, so the newest thousand are plenty.
const KEPT_RESULTS: usize = 1000;
/// How many redelivered, unanswered commands are counted. A command is redelivered only
/// when the agent stopped (or lost its connection) while holding it: a handful at once.
const KEPT_REDELIVERIES: usize = 100;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub highest_epoch: Epoch,
    /// The highest conductor term seen on a command (none before the first).
    pub highest_term: Option<tandem_proto::Term>,
    pub boot_count: u64,
    /// The source this instance was told to replicate from, to name it in status
    /// (the engine itself only knows a host and a port).
    pub source: Option<SourceEndpoint>,
    /// Set by `enable_as_master`, cleared by `demote`: whether this agent writes
    /// heartbeats. Never true on a replica.
    pub master: bool,
    /// The side of a master-master pair this server is (`configure_pair`): its write
    /// stream and auto-increment offset, applied again whenever the engine restarts.
    pub pair: Option<tandem_proto::PairSide>,
    /// Backups being written to the store and not committed yet: what a failed,
    /// cancelled or interrupted backup must remove (after a restart too).
    pub unfinished_backups: Vec<tandem_proto::BackupId>,
    results: VecDeque<(MessageId, Reply)>,
    /// Redeliveries seen of commands not answered yet.
    redeliveries: VecDeque<(MessageId, u32)>,
}

impl State {
    pub fn result_of(&self, id: &MessageId) -> Option<&Reply> {
        self.results.iter().find(|(m, _)| m == id).map(|(_, r)| r)
    }

    /// Replaces the record of a long command (its `accepted`) with its final result.
    pub fn finish(&mut self, id: MessageId, reply: Reply) {
        match self.results.iter_mut().find(|(m, _)| *m == id) {
            Some(entry) => entry.1 = reply,
            None => self.record(id, reply),
        }
    }

    /// Long commands that were still running when the agent stopped end as failed,
    /// saying so: a re-send is answered with that, never "accepted" for a command no
    /// longer running, and never runs it again blindly over what it left (the agent
    /// cleans that up at start). Returns how many there were.
    pub fn fail_interrupted(&mut self) -> usize {
        let mut n = 0;
        for (_, r) in self.results.iter_mut() {
            if matches!(r, Reply::Ok(tandem_proto::ReplyBody::Accepted { .. })) {
                *r = Reply::Err(tandem_proto::CommandError::new(
                    tandem_proto::ErrorKind::EngineRefused,
                    "interrupted: the agent restarted while this command ran; what it had \
                     made was removed at the restart; send a new one",
                ));
                n += 1;
            }
        }
        n
    }

    pub fn record(&mut self, id: MessageId, reply: Reply) {
        if self.result_of(&id).is_none() {
            self.results.push_back((id, reply));
            while self.results.len() > KEPT_RESULTS {
                self.results.pop_front();
            }
        }
        self.redeliveries.retain(|(m, _)| *m != id);
    }

    /// Counts one more redelivery of `id` (a delivery the broker flagged as redelivered)
    /// and answers how many times it has been delivered in all: the first delivery was
    /// never flagged, so this is the redeliveries counted plus one.
    pub fn redelivered(&mut self, id: MessageId) -> u32 {
        let n = match self.redeliveries.iter_mut().find(|(m, _)| *m == id) {
            Some(entry) => {
                entry.1 += 1;
                entry.1
            }
            None => {
                self.redeliveries.push_back((id, 1));
                while self.redeliveries.len() > KEPT_REDELIVERIES {
                    self.redeliveries.pop_front();
                }
                1
            }
        };
        n + 1
    }
}

/// The state file on disk.
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("field `state_dir`: cannot create {}", dir.display()))?;
        Ok(StateFile {
            path: dir.join("state.json"),
        })
    }

    pub fn load(&self) -> Result<State> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "state file {} is corrupt; move it away to start fresh (the agent then \
                     forgets its highest epoch until the conductor tells it again)",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", self.path.display())),
        }
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let dir = self.path.parent().expect("state file has a directory");
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(state)?;
        // Private: it holds recorded replies (and, until they are sealed, what they
        // carried).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("rename into {}", self.path.display()))?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::ReplyBody;

    #[test]
    fn state_survives_a_reload_and_keeps_a_bounded_record() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path()).unwrap();
        let mut s = file.load().unwrap();
        assert_eq!(s.highest_epoch, Epoch::ZERO);
        s.highest_epoch = Epoch::new(7);
        let first = MessageId::random();
        s.record(first, Reply::Ok(ReplyBody::Done));
        for _ in 0..KEPT_RESULTS {
            s.record(MessageId::random(), Reply::Ok(ReplyBody::Done));
        }
        file.save(&s).unwrap();
        let back = file.load().unwrap();
        assert_eq!(back.highest_epoch, Epoch::new(7));
        assert!(back.result_of(&first).is_none(), "oldest result evicted");
        assert_eq!(back.results.len(), KEPT_RESULTS);
    }

    #[test]
    fn redeliveries_are_counted_across_a_reload_until_the_command_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path()).unwrap();
        let (poison, other) = (MessageId::random(), MessageId::random());
        let mut s = State::default();
        assert_eq!(
            s.redelivered(poison),
            2,
            "a redelivery is the second delivery"
        );
        file.save(&s).unwrap();
        let mut s = file.load().unwrap();
        assert_eq!(s.redelivered(poison), 3, "counted across a restart");
        assert_eq!(s.redelivered(other), 2, "each command counted apart");
        s.record(poison, Reply::Ok(ReplyBody::Done));
        assert_eq!(s.redelivered(poison), 2, "an answered command starts over");
        assert_eq!(s.redelivered(other), 3);
    }

    #[test]
    fn a_corrupt_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        let err = format!(
            "{:#}",
            StateFile::new(dir.path()).unwrap().load().unwrap_err()
        );
        assert!(err.contains("is corrupt"), "{err}");
    }
}
