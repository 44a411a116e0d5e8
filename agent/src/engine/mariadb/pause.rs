//! An operator's pause of a replica: stopped where it stands, or applying up to a
//! position and stopped there (`START SLAVE UNTIL master_gtid_pos`), acknowledging
//! nothing to a semi-sync master meanwhile; and the resume.

use tandem_proto::Position;

use super::*;
use crate::engine::EngineError;

impl MariaDb {
    pub(super) async fn pause_replication(
        &self,
        until: Option<&Position>,
    ) -> Result<Position, EngineError> {
        let until = until.map(gtid_of).transpose()?.cloned();
        let mut c = self.conn().await?;
        if self.slave_status(&mut c).await?.is_none() {
            return Err(EngineError::BadRequest(
                "this server is not a replica; there is nothing to pause".into(),
            ));
        }
        self.exec(&mut c, "STOP SLAVE").await?;
        if let Some(until) = &until {
            let applied = self.gtid(&mut c, "gtid_slave_pos").await?;
            if !applied.beyond(&[until]).is_empty() {
                // Started again as it was, so that the refusal changes nothing.
                self.exec(&mut c, "START SLAVE").await?;
                return Err(EngineError::BadRequest(format!(
                    "it has already applied {applied}, beyond {until}: it cannot stop there"
                )));
            }
        }
        // A paused replica acknowledges nothing: a semi-sync master must not count on
        // a server that is not applying (takes effect as the receiver starts again).
        self.exec(&mut c, "SET GLOBAL rpl_semi_sync_slave_enabled = OFF")
            .await?;
        if let Some(until) = until {
            let applied = self.gtid(&mut c, "gtid_slave_pos").await?;
            if applied != until {
                safe_gtid(&until)?;
                self.exec(
                    &mut c,
                    &format!("START SLAVE UNTIL master_gtid_pos = '{until}'"),
                )
                .await?;
            }
        }
        drop(c);
        self.latest_position().await
    }

    pub(super) async fn resume_replication(&self, semi_sync: bool) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        if self.slave_status(&mut c).await?.is_none() {
            return Err(EngineError::BadRequest(
                "this server is not a replica; there is nothing to resume".into(),
            ));
        }
        self.exec(&mut c, "STOP SLAVE").await?;
        drop(c);
        self.set_semi_sync(None, semi_sync).await?;
        let mut c = self.conn().await?;
        self.exec(&mut c, "START SLAVE").await
    }
}

/// A GTID set as written into a statement: digits, dashes and commas only.
pub(super) fn safe_gtid(g: &GtidSet) -> Result<(), EngineError> {
    let text = g.to_string();
    if text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'-' || b == b',')
    {
        Ok(())
    } else {
        Err(EngineError::BadRequest(format!(
            "{text:?} is not a GTID position"
        )))
    }
}
