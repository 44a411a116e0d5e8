//! The steps several workflows share: giving a master its role, the replication
//! account and attach of a replica, re-pointing replicas, reading positions, and the
//! keys secrets are sealed to.

use tandem_proto::{Command, Epoch, InstanceId, ReplyBody, Sealed, Secret, SourceEndpoint};

use super::{Ctx, StepError};

/// The step name of a journaled warning.
pub const WARNING: &str = "warning";

/// How long a cascaded replica's source may take to receive its new account.
const ACCOUNT_WAIT_MS: u64 = 10_000;
use crate::store::ReplicaOptions;

impl Ctx<'_> {
    /// The set's semi-synchronous replication, for the commands that give roles.
    pub fn semi_sync(&self) -> Result<Option<tandem_proto::SemiSyncSettings>, StepError> {
        let state = self.c.store.failover_state(&self.wf.set_id)?;
        Ok(state.semi_sync.then_some(tandem_proto::SemiSyncSettings {
            timeout_ms: self.c.settings.failover.semi_sync_timeout.as_millis() as u64,
        }))
    }

    /// Whether `replica`, replicating from `source` with `options`, acknowledges a
    /// semi-synchronous master's commits: when the set wants semi-sync and the replica
    /// could be promoted; in a DR set acknowledged from the other zone, only when it is
    /// a direct replica of the master outside the master's zone (so that every
    /// acknowledged commit is in another zone).
    pub fn acknowledges(
        &self,
        replica: &InstanceId,
        source: Option<&InstanceId>,
        options: &ReplicaOptions,
    ) -> Result<bool, StepError> {
        if self.semi_sync()?.is_none() || !options.acknowledges() {
            return Ok(false);
        }
        match self.c.store.dr_settings(&self.wf.set_id)? {
            Some(dr) if dr.ack_from == tandem_api::AckFrom::OtherZone => {
                let master = self.set()?.master;
                if source != Some(&master) {
                    return Ok(false);
                }
                let zone = |i: &InstanceId| crate::placement::location(self.c, i).map(|l| l.zone);
                Ok(zone(replica).is_some_and(|z| Some(z) != zone(&master)))
            }
            _ => Ok(true),
        }
    }

    /// Enables `master` as the set's master, as one step; semi-synchronous replication
    /// comes later, with [`Ctx::semi_sync_on`].
    pub async fn enable_as_master(
        &mut self,
        step: &str,
        master: &InstanceId,
        epoch: Epoch,
    ) -> Result<ReplyBody, StepError> {
        self.send(
            step,
            master,
            epoch,
            Command::EnableAsMaster { semi_sync: None },
        )
        .await
    }

    /// Switches the master's semi-synchronous replication on when the set wants it (a
    /// step), else nothing. Sent once its replicas are attached: a semi-sync master
    /// with no replica holds every commit for the whole timeout, including the one
    /// that creates the account its first replica needs.
    pub async fn semi_sync_on(
        &mut self,
        master: &InstanceId,
        epoch: Epoch,
    ) -> Result<(), StepError> {
        // Only once a replica acknowledges: a master none acknowledges (a DR set's
        // other zone lost) would hold every commit for the whole timeout first.
        let set = self.set()?;
        let mut acknowledging = false;
        for m in set.members.iter().filter(|m| {
            m.role == crate::store::IntendedRole::Replica
                && m.replicates_from.as_ref() == Some(master)
        }) {
            acknowledging |= self.acknowledges(&m.instance, Some(master), &m.options)?;
        }
        if !acknowledging {
            return Ok(());
        }
        if let Some(semi_sync) = self.semi_sync()? {
            self.send(
                "semi-synchronous replication on the master",
                master,
                epoch,
                Command::EnableAsMaster {
                    semi_sync: Some(semi_sync),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// The key `instance` pinned at enrolment, which its secrets are sealed to.
    pub fn key_of(
        &self,
        instance: &InstanceId,
    ) -> Result<tandem_transport::identity::PublicKey, StepError> {
        use tandem_transport::identity::KeyBook;
        self.c.enrolments.key_of(instance).ok_or_else(|| {
            StepError::Precondition(format!(
                "{instance} is not enrolled: there is no key to seal its secrets to \
                 (`tandem instance enroll {instance}`)"
            ))
        })
    }

    /// `secret`, sealed to `instance`'s pinned key.
    pub fn seal_to(&self, instance: &InstanceId, secret: &Secret) -> Result<Sealed, StepError> {
        self.key_of(instance)?
            .seal(secret)
            .map_err(|e| StepError::Precondition(format!("{instance}: {e}")))
    }

    /// Where replicas reach `instance`, as its agent last advertised.
    pub fn endpoint(&self, instance: &InstanceId) -> Result<SourceEndpoint, StepError> {
        let record = self.c.store.instance(instance)?;
        match record.and_then(|r| Some((r.host?, r.port?))) {
            Some((host, port)) => Ok(SourceEndpoint {
                instance: instance.clone(),
                host,
                port,
            }),
            None => Err(StepError::Precondition(format!(
                "the agent of {instance} has not reported its engine's address"
            ))),
        }
    }

    /// Reads `instance`'s latest position, as one step.
    pub async fn latest_position(
        &mut self,
        step: &str,
        instance: &InstanceId,
        epoch: Epoch,
    ) -> Result<tandem_proto::Position, StepError> {
        match self
            .send(step, instance, epoch, Command::GetLatestPosition)
            .await?
        {
            ReplyBody::Position { position } => Ok(position),
            other => Err(StepError::Precondition(format!(
                "{instance} answered get_latest_position with {other:?}"
            ))),
        }
    }

    /// Attaches each of `replicas` to its source in the intent (a new master for its
    /// direct replicas, their own source for cascaded ones), one after the other;
    /// returns those that could not be, each with why (the workflow goes on without
    /// them).
    pub async fn repoint(&mut self, replicas: &[InstanceId], epoch: Epoch) -> Vec<String> {
        let mut left_behind = Vec::new();
        // Sources before the replicas under them: a cascaded replica's account reaches
        // its source only once that source replicates again.
        let mut replicas = replicas.to_vec();
        if let Ok(set) = self.set() {
            replicas.sort_by_key(|r| set.ancestors(r).len());
        }
        for replica in &replicas {
            if let Err(e) = self
                .attach_to_intent("re-point a replica", replica, epoch)
                .await
            {
                left_behind.push(format!("{replica} ({e})"));
            }
        }
        left_behind
    }

    /// A filter naming a database the master does not have is accepted (the database
    /// may be created later, and its changes then arrive), with a warning journaled
    /// (`tandem workflow show`). An agent too old to list its databases: no warning.
    pub async fn warn_of_missing_databases(
        &mut self,
        filter: Option<&tandem_proto::DatabaseFilter>,
        epoch: Epoch,
    ) -> Result<(), StepError> {
        let Some(filter) = filter else {
            return Ok(());
        };
        let master = self.set()?.master;
        let names = match self
            .send(
                "the master's databases",
                &master,
                epoch,
                Command::ListDatabases,
            )
            .await
        {
            Ok(ReplyBody::Databases { names }) => names,
            _ => return Ok(()),
        };
        let missing: Vec<&str> = filter
            .databases()
            .iter()
            .filter(|d| !names.contains(d))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let warning = format!(
                "the master {master} has no database {}: the filter is kept, and changes to \
                 it arrive once it is created",
                missing.join(", ")
            );
            tracing::warn!(workflow = %self.wf.id, %warning, "database filter");
            self.note(WARNING, &master, epoch, serde_json::json!(warning))?;
        }
        Ok(())
    }

    /// Attaches `replica` to its source in the intent (see [`Ctx::attach_to`]).
    pub async fn attach_to_intent(
        &mut self,
        what: &str,
        replica: &InstanceId,
        epoch: Epoch,
    ) -> Result<ReplyBody, StepError> {
        let set = self.set()?;
        let source = set
            .member(replica)
            .and_then(|m| m.replicates_from.clone())
            .unwrap_or(set.master);
        self.attach_to(what, &source, replica, epoch, None).await
    }

    /// The options of `replica` in the set (the defaults for a server not in it yet).
    pub fn options_of(&self, replica: &InstanceId) -> Result<ReplicaOptions, StepError> {
        Ok(self
            .set()?
            .members
            .into_iter()
            .find(|m| &m.instance == replica)
            .map(|m| m.options)
            .unwrap_or_default())
    }

    /// Gives `replica` its own replication account on `source` and attaches it there
    /// with its options: its delay, acknowledging to a semi-sync master only when it
    /// could be promoted, and attached paused when an operator paused it (two journaled
    /// steps, named after `what`).
    pub async fn attach_to(
        &mut self,
        what: &str,
        source: &InstanceId,
        replica: &InstanceId,
        epoch: Epoch,
        position: Option<tandem_proto::Position>,
    ) -> Result<ReplyBody, StepError> {
        let options = self.options_of(replica)?;
        let endpoint = self.endpoint(source)?;
        let master = self.set()?.master;
        // Replication accounts are made on the master and replicate to every member:
        // one made on a replica would be a transaction of its own (errant).
        let credentials = self
            .replication_credentials(
                &format!("{what}: replication user"),
                &master,
                replica,
                epoch,
            )
            .await?;
        if source != &master {
            // A cascaded replica logs in to its source: wait for the account there.
            let at = self
                .latest_position(&format!("{what}: the master's position"), &master, epoch)
                .await?;
            self.send(
                &format!("{what}: the account reaches {source}"),
                source,
                epoch,
                Command::WaitForPosition {
                    position: at,
                    timeout_ms: ACCOUNT_WAIT_MS,
                },
            )
            .await?;
        }
        self.send(
            &format!("{what}: attach"),
            replica,
            epoch,
            Command::AttachToSource {
                source: endpoint,
                credentials,
                position,
                semi_sync: self.acknowledges(replica, Some(source), &options)?,
                delay_s: options.delay_s,
                // Attached paused: nothing is applied on the way to the new source.
                paused: options
                    .paused
                    .map(|p| tandem_proto::Paused { until: p.until }),
                filter: options.filter,
                peer: false,
            },
        )
        .await
    }

    /// The first half of every planned switch: `old` goes read-only, its position is
    /// read, `candidate` applies exactly that and must hold nothing `old` lacks (an
    /// errant transaction). `old`'s position; on failure nothing has changed but
    /// `old`'s writability (the caller rolls that back).
    pub async fn catch_up(
        &mut self,
        old: &InstanceId,
        candidate: &InstanceId,
        epoch: Epoch,
        catch_up_ms: u64,
    ) -> Result<tandem_proto::Position, StepError> {
        self.send("old master read-only", old, epoch, Command::SetReadOnly)
            .await?;
        let position = self
            .latest_position("read the old master's position", old, epoch)
            .await?;
        self.send(
            "candidate catches up",
            candidate,
            epoch,
            Command::WaitForPosition {
                position: position.clone(),
                timeout_ms: catch_up_ms,
            },
        )
        .await?;
        let reached = self
            .latest_position("read the candidate's position", candidate, epoch)
            .await?;
        match reached.beyond(&[&position]) {
            None => Ok(position),
            Some(errant) => Err(StepError::Precondition(format!(
                "errant: {candidate} (at {reached}) holds {errant}, which {old} (at {position}) \
                 never had; it is never promoted"
            ))),
        }
    }

    /// The reverse channel of a master-master pair: `active` replicates `passive`
    /// with an account made on `passive` (written in no binary log there), staying
    /// writable and the master.
    ///
    /// The channel starts where `active` stands, which `passive` must hold already:
    /// MariaDB refuses a replica asking for a GTID its source lacks, and strict mode
    /// refuses to start one from anything less. So `active` stops writing for the
    /// moment `passive` takes to catch up (which also ends its client sessions: they
    /// come back with its new write stream and key offsets), and writes again after,
    /// whatever became of the attach.
    pub async fn attach_reverse(
        &mut self,
        active: &InstanceId,
        passive: &InstanceId,
        epoch: Epoch,
    ) -> Result<ReplyBody, StepError> {
        self.send(
            &format!("{active} read-only while {passive} catches up"),
            active,
            epoch,
            Command::SetReadOnly,
        )
        .await?;
        let attached = self.attach_reverse_now(active, passive, epoch).await;
        let writable = self
            .send(
                &format!("{active} writable again"),
                active,
                epoch,
                Command::SetWritable,
            )
            .await;
        let reply = attached?;
        writable?;
        Ok(reply)
    }

    async fn attach_reverse_now(
        &mut self,
        active: &InstanceId,
        passive: &InstanceId,
        epoch: Epoch,
    ) -> Result<ReplyBody, StepError> {
        let at = self
            .latest_position(&format!("{active}'s position"), active, epoch)
            .await?;
        self.send(
            &format!("{passive} holds it"),
            passive,
            epoch,
            Command::WaitForPosition {
                position: at,
                timeout_ms: ACCOUNT_WAIT_MS,
            },
        )
        .await?;
        let credentials = self
            .replication_credentials(
                &format!("{active} replicates {passive}: replication user"),
                passive,
                active,
                epoch,
            )
            .await?;
        let source = self.endpoint(passive)?;
        self.send(
            &format!("{active} replicates {passive}: attach, staying writable"),
            active,
            epoch,
            Command::AttachToSource {
                source,
                credentials,
                position: None,
                semi_sync: false,
                delay_s: 0,
                paused: None,
                filter: None,
                peer: true,
            },
        )
        .await
    }

    async fn replication_credentials(
        &mut self,
        step: &str,
        master: &InstanceId,
        replica: &InstanceId,
        epoch: Epoch,
    ) -> Result<tandem_proto::ReplicationCredentials, StepError> {
        match self
            .send(
                step,
                master,
                epoch,
                Command::CreateReplicationUser {
                    replica: replica.clone(),
                    // The master seals the password straight to the replica.
                    seal_to: self.key_of(replica)?.into(),
                    // Only from the address the replica reports for its engine.
                    from: match self.c.settings.replication_accounts_from {
                        crate::config::AccountsFrom::Any => None,
                        crate::config::AccountsFrom::ReplicaAddress => self
                            .c
                            .registry
                            .report(replica)
                            .and_then(|r| r.endpoint)
                            .map(|e| e.host),
                    },
                },
            )
            .await?
        {
            ReplyBody::Credentials { credentials } => Ok(credentials),
            other => Err(StepError::Precondition(format!(
                "{master} answered create_replication_user with {other:?}"
            ))),
        }
    }
}
