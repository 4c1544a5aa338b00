//! What each kind of vendor is, in one place per kind: the facts the rest of the daemon needs
//! (name, default address, what it accepts, whether it can delete, what its remote copies are
//! called, its config keys) without knowing its wire format. Each adapter module declares its
//! `SPEC`; adding a vendor is a new folder under `src/adapters/` and a line here.

use super::{Limits, feishu, jiandaoyun, kingdee};
use crate::config::{ConfigError, VendorKeys, VendorSettings};

/// The facts about one kind of vendor.
#[derive(Debug)]
pub struct KindSpec {
    /// The `kind:` in the config, and the `kind` in `files --json`.
    pub name: &'static str,
    pub default_base_url: &'static str,
    /// `None` when the vendor can delete what was uploaded; else why `on_remove: delete` cannot
    /// be honoured.
    pub no_delete: Option<&'static str>,
    /// The contract's field for a remote copy's reference (`url`, `file_token`, `key`).
    pub reference_field: &'static str,
    /// The file names a watch takes when it gives no `include`: what the vendor accepts.
    pub default_include: &'static [&'static str],
    pub limits: Limits,
    /// The rate the vendor documents (a second, a minute), if it documents one: `per_second` and
    /// `per_minute` may lower it; set above it, the vendor answers 429s.
    pub documented_rate: Option<(u32, u32)>,
    /// The keys a vendor of this kind takes besides `kind`, `base_url`, `per_second` and
    /// `per_minute` (a secret's `<key>_file` included).
    pub config_keys: &'static [&'static str],
}

/// The kinds of vendor this build speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VendorKind {
    Kingdee,
    Feishu,
    Jiandaoyun,
}

impl VendorKind {
    pub const ALL: [VendorKind; 3] = [
        VendorKind::Kingdee,
        VendorKind::Feishu,
        VendorKind::Jiandaoyun,
    ];

    pub fn spec(self) -> &'static KindSpec {
        match self {
            VendorKind::Kingdee => &kingdee::SPEC,
            VendorKind::Feishu => &feishu::SPEC,
            VendorKind::Jiandaoyun => &jiandaoyun::SPEC,
        }
    }

    /// The kind named `name` in a config.
    pub fn parse(name: &str) -> Option<VendorKind> {
        VendorKind::ALL.into_iter().find(|k| k.spec().name == name)
    }

    pub fn as_str(self) -> &'static str {
        self.spec().name
    }

    /// Whether the vendor offers an API to delete what was uploaded.
    pub fn can_delete(self) -> bool {
        self.spec().no_delete.is_none()
    }

    pub fn default_include(self) -> &'static [&'static str] {
        self.spec().default_include
    }

    pub fn default_base_url(self) -> &'static str {
        self.spec().default_base_url
    }

    /// The vendor's own keys, read by the adapter that knows what they mean.
    pub fn read_settings(self, keys: &mut VendorKeys<'_>) -> Result<VendorSettings, ConfigError> {
        Ok(match self {
            VendorKind::Kingdee => VendorSettings::Kingdee(kingdee::KingdeeConfig::read(keys)?),
            VendorKind::Feishu => VendorSettings::Feishu(feishu::FeishuConfig::read(keys)?),
            VendorKind::Jiandaoyun => {
                VendorSettings::Jiandaoyun(jiandaoyun::JiandaoyunConfig::read(keys)?)
            }
        })
    }
}

/// The file names a watch takes by default: the images every vendor accepts.
pub const DEFAULT_INCLUDE: &[&str] = &["*.jpg", "*.jpeg", "*.png", "*.gif", "*.bmp", "*.webp"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_found_by_its_name_and_names_a_reference_field() {
        for kind in VendorKind::ALL {
            assert_eq!(VendorKind::parse(kind.as_str()), Some(kind));
            assert!(["url", "file_token", "key"].contains(&kind.spec().reference_field));
        }
        assert_eq!(VendorKind::parse("dropbox"), None);
        assert!(VendorKind::Kingdee.can_delete());
        assert!(!VendorKind::Feishu.can_delete());
        assert!(!VendorKind::Jiandaoyun.can_delete());
    }
}
