//! The zones a cloud administrator offers and the DR profiles between them, from the
//! conductor's configuration:
//!
//! ```toml
//! [[zones]]
//! name = "fra-1"
//! description = "Frankfurt, room 1"
//! [[zones]]
//! name = "ams-1"
//! [[dr_profiles]]
//! name = "fra-to-ams"
//! primary = "fra-1"
//! dr = "ams-1"
//! ```
//!
//! (as environment: `TANDEM_CONDUCTOR_ZONES='[{name="fra-1"},{name="ams-1"}]'`).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tandem_api::DrProfile;
use tandem_proto::ZoneId;

/// One `[[zones]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneConfig {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// One `[[dr_profiles]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrProfileConfig {
    pub name: String,
    pub primary: String,
    pub dr: String,
}

/// The zones and DR profiles, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zones {
    pub zones: Vec<(ZoneId, Option<String>)>,
    pub dr_profiles: Vec<DrProfile>,
}

impl Zones {
    /// Zone names are ids, each once; a profile names two different configured zones
    /// and its own name once.
    pub fn validate(zones: &[ZoneConfig], profiles: &[DrProfileConfig]) -> Result<Zones> {
        let mut out = Zones::default();
        for z in zones {
            let id = ZoneId::new(z.name.clone())
                .with_context(|| format!("field `zones`: zone {:?}", z.name))?;
            anyhow::ensure!(
                !out.zones.iter().any(|(have, _)| have == &id),
                "field `zones`: zone {id} is defined twice"
            );
            out.zones.push((id, z.description.clone()));
        }
        for p in profiles {
            anyhow::ensure!(
                !p.name.is_empty() && !out.dr_profiles.iter().any(|d| d.name == p.name),
                "field `dr_profiles`: profile name {:?} is empty or used twice",
                p.name
            );
            let zone = |which: &str, name: &str| -> Result<ZoneId> {
                let id = ZoneId::new(name).with_context(|| {
                    format!("field `dr_profiles`: profile {:?}, {which} zone", p.name)
                })?;
                anyhow::ensure!(
                    out.zone(id.as_str()).is_some(),
                    "field `dr_profiles`: profile {:?} names {which} zone {id}, which is not \
                     in `zones` (configured: {})",
                    p.name,
                    out.names()
                );
                Ok(id)
            };
            let primary = zone("primary", &p.primary)?;
            let dr = zone("dr", &p.dr)?;
            anyhow::ensure!(
                primary != dr,
                "field `dr_profiles`: profile {:?} has {primary} as both its primary and its \
                 DR zone; a DR zone is another zone",
                p.name
            );
            out.dr_profiles.push(DrProfile {
                name: p.name.clone(),
                primary,
                dr,
            });
        }
        Ok(out)
    }

    pub fn zone(&self, name: &str) -> Option<&(ZoneId, Option<String>)> {
        self.zones.iter().find(|(z, _)| z.as_str() == name)
    }

    pub fn profile(&self, name: &str) -> Option<&DrProfile> {
        self.dr_profiles.iter().find(|p| p.name == name)
    }

    /// The configured zones, for messages (`none` when there are none).
    pub fn names(&self) -> String {
        if self.zones.is_empty() {
            return "none".into();
        }
        let names: Vec<&str> = self.zones.iter().map(|(z, _)| z.as_str()).collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> ZoneConfig {
        ZoneConfig {
            name: name.into(),
            description: None,
        }
    }

    fn profile(name: &str, primary: &str, dr: &str) -> DrProfileConfig {
        DrProfileConfig {
            name: name.into(),
            primary: primary.into(),
            dr: dr.into(),
        }
    }

    #[test]
    fn profiles_name_two_configured_zones() {
        let zones = [zone("zone-a"), zone("zone-b")];
        let ok = Zones::validate(&zones, &[profile("a-to-b", "zone-a", "zone-b")]).unwrap();
        assert_eq!(ok.profile("a-to-b").unwrap().dr.as_str(), "zone-b");
        let cases = [
            (vec![zone("Zone A")], vec![], "field `zones`"),
            (
                vec![zone("zone-a"), zone("zone-a")],
                vec![],
                "defined twice",
            ),
            (
                zones.to_vec(),
                vec![profile("p", "zone-a", "zone-c")],
                "not in `zones` (configured: zone-a, zone-b)",
            ),
            (
                zones.to_vec(),
                vec![profile("p", "zone-a", "zone-a")],
                "both its primary and its DR zone",
            ),
            (
                zones.to_vec(),
                vec![
                    profile("p", "zone-a", "zone-b"),
                    profile("p", "zone-b", "zone-a"),
                ],
                "used twice",
            ),
        ];
        for (zones, profiles, part) in cases {
            let err = format!("{:#}", Zones::validate(&zones, &profiles).unwrap_err());
            assert!(err.contains(part), "{err}");
        }
    }

    #[test]
    // figment's Jail returns its own (large) error type; this is its documented shape.
    #[allow(clippy::result_large_err)]
    fn zones_and_profiles_can_be_given_as_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "TANDEM_CONDUCTOR_ZONES",
                r#"[{name="zone-a", description="room 1"},{name="zone-b"}]"#,
            );
            jail.set_env(
                "TANDEM_CONDUCTOR_DR_PROFILES",
                r#"[{name="a-to-b", primary="zone-a", dr="zone-b"}]"#,
            );
            let config = crate::config::ConductorConfig::load(None).unwrap();
            let zones = Zones::validate(&config.zones, &config.dr_profiles).unwrap();
            assert_eq!(zones.names(), "zone-a, zone-b");
            assert_eq!(zones.zones[0].1.as_deref(), Some("room 1"));
            assert_eq!(zones.profile("a-to-b").unwrap().primary.as_str(), "zone-a");
            Ok(())
        });
    }
}
