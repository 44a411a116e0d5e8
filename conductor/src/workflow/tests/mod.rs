//! The workflows against a scripted fake agent, with tokio's clock paused: every
//! command a workflow sends is recorded with the time it left, every answer is the
//! script's, and time moves only when every task waits (a 20 s budget passes at once).
//! No broker, no engine: what is asserted is what the workflow sent, in which order and
//! under which epoch, and how it ended. The end-to-end tests run the same workflows on
//! real engines.

mod cascade;
mod detector;
mod failover;
mod fake;
mod pair;
mod reconfigure;
mod rejoin;
mod resume;
mod switchover;
