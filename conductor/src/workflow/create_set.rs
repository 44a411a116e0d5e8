//! A standalone server becomes the master of a new replica set. The set row was created
//! (at a fresh epoch) when the request was accepted.

use tandem_proto::{Command, InstanceId};

use super::{Ctx, Outcome, StepError};

pub async fn run(ctx: &mut Ctx<'_>, master: &InstanceId) -> Result<Outcome, StepError> {
    let set = ctx.set()?;
    let epoch = set.epoch;
    let made = async {
        ctx.enable_as_master("enable as master", master, epoch)
            .await?;
        ctx.send("make writable", master, epoch, Command::SetWritable)
            .await
    }
    .await;
    match made {
        Ok(_) => Ok(Outcome::Done),
        Err(e) => {
            ctx.c.store.delete_set(&set.id)?;
            Ok(Outcome::RolledBack(format!(
                "{e}; replica set {} was not created",
                set.id
            )))
        }
    }
}
