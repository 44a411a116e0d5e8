//! Real components for tests, started once and well.
//!
//! * [`Broker`]: a fresh RabbitMQ virtual host per test on the local broker, so tests run
//!   in parallel without sharing a queue.
//! * [`MariaDb`] / [`Postgres`]: private engine instances with their own data directory,
//!   port and socket in a temporary directory.
//! * [`Swift`]: a private OpenStack Swift (proxy, account, container, object server) for
//!   backup store tests.
//! * [`Host`]: a network namespace joined by a veth link, to cut one host off.
//! * [`CpuJail`]: one CPU shared with busy processes, a host whose CPU is saturated.
//! * [`TestCa`]: a private certificate authority issuing certificates for 127.0.0.1.
//! * [`Process`]: a spawned binary (an agent, the conductor) that dies with the test.
//!
//! Every value stops and removes what it started when dropped, which also happens when a
//! test panics. Children are started with a parent-death signal, so even a test process
//! killed with SIGKILL leaves no engine running.

mod agent;
mod broker;
mod broker_cluster;
mod cpu;
mod disk;
mod keys;
mod mariadb;
mod netns;
mod postgres;
mod process;
mod signals;
mod swift;
mod tls;
mod tls_broker;

pub use agent::{binary, AgentProcess, Child, ConductorProcess};
pub use broker::Broker;
pub use broker_cluster::BrokerCluster;
pub use cpu::CpuJail;
pub use disk::SmallDisk;
pub use keys::{conductor_key, conductor_secret, enrolment_token, AgentKeys, ConductorKey};
pub use mariadb::{MariaDb, MariaDbOptions};
pub use netns::{Forward, Host, RootAddress};
pub use nix::sys::signal::Signal;
pub use postgres::Postgres;
pub use process::{free_port, Process};
pub use signals::Target;
pub use swift::Swift;
pub use tls::{Issued, TestCa};
pub use tls_broker::TlsBroker;

/// Where tests find the broker: `AMQP_ADDR` without a vhost, default the local guest account.
pub fn amqp_base() -> String {
    std::env::var("AMQP_ADDR").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

/// Sets up `tracing` output for a test binary once (honours `RUST_LOG`, default `warn`).
pub fn init_tracing() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
