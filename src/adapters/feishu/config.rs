//! A Feishu vendor's keys in the config, and how they are read.

use crate::config::{ConfigError, Secret, VendorKeys};

/// A Feishu (or Lark) self-built app: its tenant_access_token uploads to lingo.
#[derive(Debug, Clone, PartialEq)]
pub struct FeishuConfig {
    pub app_id: String,
    pub app_secret: Secret,
}

impl FeishuConfig {
    pub fn read(keys: &mut VendorKeys<'_>) -> Result<Self, ConfigError> {
        Ok(FeishuConfig {
            app_id: keys.required("app_id")?,
            app_secret: keys.secret("app_secret")?,
        })
    }
}
