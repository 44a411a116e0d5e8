//! The instance metadata keys the conductor acts on, and the values each takes. Any
//! other key is free-form (Trove's instance metadata); these are refused when wrong,
//! so that a typo never silently changes a failover or an engine setting.
//! `replication_delay_s` is a read-only view of what the engine applies: the delay is
//! a replica's option (`tandem replica delay`), never a note beside it.

use crate::decide::candidate::PromotionRule;

/// `failover_priority` runs from minus this to this.
pub const PRIORITY_RANGE: i64 = 1000;

/// The keys shown from the engine, never stored.
pub const READ_ONLY: &[&str] = &["replication_delay_s"];

/// Checks `value` for a known `key`; says what the key takes when it is wrong.
pub fn validate(key: &str, value: &str) -> Result<(), String> {
    match key {
        "promotion_rule" => PromotionRule::parse(Some(value)).map(|_| ()),
        "failover_priority" => match value.parse::<i64>() {
            Ok(p) if (-PRIORITY_RANGE..=PRIORITY_RANGE).contains(&p) => Ok(()),
            _ => Err(format!(
                "failover_priority {value:?} is not a whole number from -{PRIORITY_RANGE} to \
                 {PRIORITY_RANGE} (higher is preferred)"
            )),
        },
        "replication_delay_s" => Err(read_only(key)),
        _ => Ok(()),
    }
}

/// Why a read-only key cannot be set or deleted, and what to do instead.
pub fn read_only(key: &str) -> String {
    format!(
        "{key} is read-only: it shows the delay the replica's engine applies; change it \
         with `tandem replica delay SET INSTANCE SECONDS` (or `tandem replica catch-up`)"
    )
}

/// The read-only keys of an instance, from its last report: the delay its engine
/// applies, for a replica.
pub fn from_engine(report: Option<&tandem_proto::StatusReport>) -> Vec<(String, String)> {
    report
        .and_then(|r| r.replication.as_ref())
        .map(|s| vec![("replication_delay_s".to_string(), s.delay_s.to_string())])
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_take_only_their_values() {
        let cases: &[(&str, &str, Result<(), &str>)] = &[
            ("promotion_rule", "prefer", Ok(())),
            ("promotion_rule", "always", Err("is not prefer, neutral")),
            ("failover_priority", "-3", Ok(())),
            ("failover_priority", "high", Err("not a whole number")),
            ("failover_priority", "1000", Ok(())),
            ("failover_priority", "1001", Err("from -1000 to 1000")),
            (
                "failover_priority",
                "99999999999999999999",
                Err("from -1000 to 1000"),
            ),
            ("replication_delay_s", "3600", Err("is read-only")),
            ("owner", "anything at all", Ok(())),
        ];
        for (key, value, expect) in cases {
            match (validate(key, value), expect) {
                (Ok(()), Ok(())) => {}
                (Err(msg), Err(part)) => assert!(msg.contains(part), "{key}={value}: {msg}"),
                (got, _) => panic!("{key}={value}: got {got:?}, expected {expect:?}"),
            }
        }
    }
}
