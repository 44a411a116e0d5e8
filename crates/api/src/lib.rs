//! The conductor's HTTP API as types, in the shape of neon's `*_api` crates: every
//! request body and every answer of `/v1/...`, with a serde enum for each closed set of
//! values (seed methods, backup kinds, failover actions, workflow kinds and states,
//! error kinds). The conductor's handlers produce these, the OpenAPI document is
//! derived from them, and the typed [`client::Client`] (feature `client`) reads them:
//! the CLI and the end-to-end tests never read an answer by string key.
//!
//! Depends on `tandem-proto` only (for ids, positions and status reports), so that a
//! client never links the conductor.

mod backups;
#[cfg(feature = "client")]
pub mod client;
mod error;
mod events;
mod instances;
mod paging;
mod pair;
mod placement;
mod provision;
mod sets;
mod workflows;

pub use backups::{
    BackupList, BackupRunState, BackupRunView, BackupStarted, BackupStatus, CancelRequested,
    TakeBackup, TakeBackupKind,
};
pub use error::{ErrorBody, ErrorKind};
pub use events::ApiEvent;
pub use instances::{
    Contract, Deleted, EnrolRequest, EnrolmentView, Health, InstanceView, MetadataEntry,
    MetadataValue, PingResult,
};
pub use paging::{
    page_size, AuditQuery, InstanceQuery, Page, SetQuery, WorkflowQuery, MAX_PAGE, NEXT_PAGE,
};
pub use pair::{PairView, SetMode};
pub use placement::{
    AckFrom, CreateRule, DrFailover, DrProfile, DrSettings, DrSwitch, DrView, Location,
    PlacementPolicy, PlacementRule, PlacementScope, PoolChange, PoolEntry, RebuildMaster, RuleId,
    SetRules, Violation, ZoneView, ZonesView,
};
pub use provision::{MakeServers, PlacedMember, ProvisionAnswer, ProvisionRequest, ServerGroup};
pub use sets::{
    AddReplica, CreateSet, DelayReplica, Failover, FailoverAction, FailoverState, FailoverView,
    FilterReplica, IntendedRole, Member, MemberView, Pause, PauseReplica, ReplicaOptions,
    SeedMethod, SemiSyncRequest, SetView, Switchover, Verdict, MAX_DELAY_S,
};
pub use workflows::{
    ApiRequest, FailoverSummary, JournalEntry, Seed, StepOutcome, WorkflowDetail, WorkflowKind,
    WorkflowRow, WorkflowSpec, WorkflowState,
};

/// A closed set of words that travel as strings (path segments, stored columns): each
/// has one spelling, shared by serde, the store and the CLI.
pub trait Word: Sized + Copy + 'static {
    /// Every value, in a fixed order (for error messages that list the choices).
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    /// The value spelled `s`, or an error that lists the choices.
    fn parse_word(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let choices: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                format!("{s:?} is not one of {}", choices.join(", "))
            })
    }
}

/// Implements [`Word`] and `Display` for a unit-only enum from its variant list.
macro_rules! words {
    ($ty:ty { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// Its one spelling (serde's, the store's, the CLI's).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(<$ty>::$variant => $word),+
                }
            }
        }
        impl $crate::Word for $ty {
            const ALL: &'static [Self] = &[$(<$ty>::$variant),+];
            fn as_str(self) -> &'static str {
                <$ty>::as_str(self)
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::Word::as_str(*self))
            }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <$ty as $crate::Word>::parse_word(s)
            }
        }
    };
}
pub(crate) use words;

#[cfg(test)]
mod tests;
