//! The wire contract between Tandem's conductor, its guest agents and its operators.
//!
//! This crate depends on nothing else of Tandem's: both sides depend on it, so a change
//! here is a change to the protocol and must keep the [version rule](version).
//!
//! * [`Envelope`] wraps every message with its id, target, epoch and deadline.
//! * [`Command`] is the closed set of things a conductor can ask of an agent.
//! * [`Reply`] is what an agent answers: a result or a [`CommandError`] with a closed kind.
//! * [`StatusReport`] is what an agent publishes on its own every interval.
//! * [`Position`] (a MariaDB [`GtidSet`] or a PostgreSQL [`Lsn`]) has one partial order, here.
//! * [`codec`] turns all of these into MessagePack for the wire and JSON for people.

pub mod codec;
pub mod command;
pub mod envelope;
pub mod failsafe;
pub mod ids;
pub mod position;
pub mod reply;
pub mod secret;
pub mod status;
pub mod version;

pub use codec::{CodecError, Format};
pub use command::{
    BackupKind, BackupRequest, Command, DatabaseFilter, PairSide, Paused, ReplicationCredentials,
    RestoreRequest, SeedSource, SemiSyncSettings, SourceEndpoint,
};
pub use envelope::{Envelope, Sender, Timestamp};
pub use failsafe::{
    FailsafeAssignment, FailsafeDatagram, FailsafeMessage, FailsafePeer, FailsafeState,
};
pub use ids::{
    BackupId, Epoch, HostId, IdError, InstanceId, MessageId, ReplicaSetId, Term, ZoneId,
};
pub use position::{
    Gtid, GtidSet, Lsn, Position, PositionError, Timeline, TimelineSwitch, WalPosition,
};
pub use reply::{BackupInfo, CommandError, ErrorKind, Event, Reply, ReplyBody};
pub use secret::{AgentKey, Sealed, Secret};
pub use status::{
    Endpoint, EngineKind, Health, HostMetrics, Lag, LagSource, OperationProgress, ReplicationState,
    Role, SemiSync, StatusReport,
};
pub use version::{ProtocolVersion, VersionError, VersionRange};
