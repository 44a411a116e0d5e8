//! The agent's own key: made at first start in its state directory (`agent.key`, 0600)
//! and kept. It signs every report, event and reply, so that the conductor, which pins
//! one key per instance at enrolment, can tell this agent from anyone else holding a
//! login on the broker. A new key (a wiped state directory) is a new identity: the
//! operator re-keys the instance on purpose (`tandem instance rekey ID`).

use std::path::Path;

use tandem_transport::signing::SigningKey;

/// This agent's key, made on first use.
pub fn key(state_dir: &Path) -> anyhow::Result<SigningKey> {
    SigningKey::load_or_generate(&state_dir.join("agent.key"))
        .map_err(|e| anyhow::anyhow!("field `state_dir`: the agent's key: {e}"))
}
