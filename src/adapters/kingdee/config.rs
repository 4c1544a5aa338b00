//! A Kingdee vendor's keys in the config, and how they are read.

use crate::config::{ConfigError, Secret, VendorKeys};

#[derive(Debug, Clone, PartialEq)]
pub struct KingdeeConfig {
    pub client_id: String,
    pub client_secret: Secret,
    pub app_key: String,
    pub app_secret: Secret,
    pub domain: String,
    pub save_temp: bool,
}

impl KingdeeConfig {
    pub fn read(keys: &mut VendorKeys<'_>) -> Result<Self, ConfigError> {
        Ok(KingdeeConfig {
            client_id: keys.required("client_id")?,
            client_secret: keys.secret("client_secret")?,
            app_key: keys.required("app_key")?,
            app_secret: keys.secret("app_secret")?,
            domain: keys.required("domain")?,
            save_temp: keys.flag("save_temp").unwrap_or(false),
        })
    }
}
