//! A Jiandaoyun vendor's keys in the config, and how they are read.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{ConfigError, Secret, Template, VendorKeys};

/// A Jiandaoyun (简道云) form: files go up against its upload tokens and, with `create_record`, each
/// gets a record of its own that holds its key.
#[derive(Debug, Clone, PartialEq)]
pub struct JiandaoyunConfig {
    pub api_key: Secret,
    pub app_id: String,
    pub entry_id: String,
    pub create_record: Option<CreateRecord>,
    /// The roots of the watches feeding this vendor, for `{relpath}` (filled in from `watches`).
    pub watch_roots: Vec<PathBuf>,
}

/// One form record per file: the image widget gets the file's key, each field its template.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRecord {
    pub image_widget: String,
    pub fields: BTreeMap<String, Template>,
}

impl JiandaoyunConfig {
    pub fn read(keys: &mut VendorKeys<'_>) -> Result<Self, ConfigError> {
        Ok(JiandaoyunConfig {
            api_key: keys.secret("api_key")?,
            app_id: keys.required("app_id")?,
            entry_id: keys.required("entry_id")?,
            create_record: keys.create_record()?,
            watch_roots: Vec::new(),
        })
    }
}
