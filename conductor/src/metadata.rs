//! The instance metadata keys the conductor acts on, and the values each takes. Any
//! other key is free-form (Trove's instance metadata); these are refused when wrong,
//! so that a typo never silently changes a failover or an engine setting.

use crate::decide::candidate::PromotionRule;

/// `failover_priority` runs from minus this to this.
pub const PRIORITY_RANGE: i64 = 1000;

/// MariaDB's `MASTER_DELAY` upper bound, in seconds.
pub const MAX_DELAY_S: u64 = (1 << 31) - 1;

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
        "replication_delay_s" => match value.parse::<u64>() {
            Ok(d) if d <= MAX_DELAY_S => Ok(()),
            _ => Err(format!(
                "replication_delay_s {value:?} is not a whole number of seconds from 0 to {MAX_DELAY_S}"
            )),
        },
        _ => Ok(()),
    }
}

/// A replica's intended delay from its `replication_delay_s` value; 0 when unset or
/// (stored before it was validated) not a valid one.
pub fn delay_s(value: Option<&str>) -> u64 {
    value
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|d| *d <= MAX_DELAY_S)
        .unwrap_or(0)
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
            ("replication_delay_s", "3600", Ok(())),
            ("replication_delay_s", "-1", Err("from 0 to")),
            ("replication_delay_s", "1.5", Err("from 0 to")),
            ("replication_delay_s", "99999999999", Err("from 0 to")),
            ("owner", "anything at all", Ok(())),
        ];
        for (key, value, expect) in cases {
            match (validate(key, value), expect) {
                (Ok(()), Ok(())) => {}
                (Err(msg), Err(part)) => assert!(msg.contains(part), "{key}={value}: {msg}"),
                (got, _) => panic!("{key}={value}: got {got:?}, expected {expect:?}"),
            }
        }
        assert_eq!(delay_s(Some("5")), 5);
        assert_eq!(delay_s(Some("x")), 0);
        assert_eq!(delay_s(None), 0);
    }
}
