//! One daemon, three vendors, a drop folder each: Kingdee `erp`, Feishu lingo `wiki` and
//! Jiandaoyun `forms` (a record per file). Included with `#[path]` by the tests that need it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{FeishuVendor, Harness, JiandaoyunVendor, Options, image};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Vendor {
    Kingdee,
    Feishu,
    Jiandaoyun,
}

pub const ALL: [Vendor; 3] = [Vendor::Kingdee, Vendor::Feishu, Vendor::Jiandaoyun];

/// A picture every vendor takes (lingo wants 320 px a side and 3 KB at least).
pub fn picture(seed: u32) -> Vec<u8> {
    image(image::ImageFormat::Png, seed, 330, 330)
}

pub struct Three {
    pub h: Harness,
    kingdee: PathBuf,
    feishu: PathBuf,
    staging: PathBuf,
}

impl Three {
    /// The harness with `forms` (a record per file) on its drop folder, and `erp` and `wiki` on
    /// folders of their own. Kingdee hands out tokens freely: restarts each fetch one.
    pub fn new(mut options: Options) -> Three {
        options.feishu = Some(FeishuVendor::default());
        options.jiandaoyun = Some(JiandaoyunVendor {
            create_record: true,
            ..JiandaoyunVendor::default()
        });
        options.sandbox.kingdee_token_per_minute = 100;
        let h = Harness::with(options);
        let kingdee = h.dir.path().join("kingdee");
        let feishu = h.dir.path().join("feishu");
        let staging = h.dir.path().join("staging-three");
        for dir in [&kingdee, &feishu, &staging] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let config = std::fs::read_to_string(&h.config_path).unwrap()
            + &format!("  - path: {}\n    vendor: erp\n", kingdee.display())
            + &format!("  - path: {}\n    vendor: wiki\n", feishu.display());
        std::fs::write(&h.config_path, config).unwrap();
        Three {
            h,
            kingdee,
            feishu,
            staging,
        }
    }

    /// Starts the daemon; `timeout` shortens its vendor calls' total timeout (a debug-build hook).
    pub fn start(&mut self, timeout: Option<&str>) {
        match timeout {
            Some(t) => self
                .h
                .start_with("text", &[("IMGSYNCD_TEST_HTTP_TIMEOUT", t)]),
            None => self.h.start(),
        }
    }

    pub fn folder(&self, vendor: Vendor) -> &Path {
        match vendor {
            Vendor::Kingdee => &self.kingdee,
            Vendor::Feishu => &self.feishu,
            Vendor::Jiandaoyun => &self.h.drop,
        }
    }

    /// Writes `bytes` outside the watches and moves them in as `name`; the file's path.
    pub fn drop(&self, vendor: Vendor, name: &str, bytes: &[u8]) -> PathBuf {
        let temp = self.staging.join(name);
        std::fs::write(&temp, bytes).unwrap();
        let path = self.folder(vendor).join(name);
        std::fs::rename(&temp, &path).unwrap();
        path
    }

    pub fn row(&self, path: &Path) -> Option<Value> {
        let shown = path.display().to_string();
        self.h
            .files()
            .into_iter()
            .find(|f| f["path"] == shown.as_str())
    }

    pub fn state(&self, path: &Path) -> Option<String> {
        self.row(path)
            .and_then(|f| f["state"].as_str().map(String::from))
    }

    pub fn wait_state(&self, path: &Path, state: &str) -> Value {
        self.h
            .wait_for(&format!("{} to be {state}", path.display()), |_| {
                self.state(path).as_deref() == Some(state)
            });
        self.row(path).unwrap()
    }

    /// The bytes the vendor holds under what the journal recorded for this row; for Jiandaoyun
    /// only if the record the journal names exists and holds that key.
    pub fn held(&self, row: &Value) -> Option<Vec<u8>> {
        let sandbox = &self.h.sandbox;
        if let Some(url) = row["url"].as_str() {
            return sandbox.images().get(url).map(|i| i.bytes.clone());
        }
        if let Some(token) = row["file_token"].as_str() {
            return sandbox.feishu_files().get(token).map(|f| f.bytes.clone());
        }
        let key = row["key"].as_str()?;
        let record_id = row["record_id"].as_str()?;
        let records = sandbox.jiandaoyun_records();
        let record = records.iter().find(|r| r.id == record_id)?;
        if !record.keys.iter().any(|k| k == key) {
            return None;
        }
        sandbox
            .jiandaoyun_uploads()
            .get(key)
            .map(|u| u.bytes.clone())
    }

    /// How many copies the vendor ever stored (Kingdee: including those deleted since).
    pub fn copies(&self, vendor: Vendor) -> usize {
        let sandbox = &self.h.sandbox;
        match vendor {
            Vendor::Kingdee => sandbox.images().len() + sandbox.deleted().len(),
            Vendor::Feishu => sandbox.feishu_files().len(),
            Vendor::Jiandaoyun => sandbox.jiandaoyun_uploads().len(),
        }
    }

    /// `history PATH --json`.
    pub fn history(&self, path: &Path) -> Vec<Value> {
        let out = self.h.cli(&["history", path.to_str().unwrap(), "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Asserts every file is synced once in the journal with its exact bytes at its vendor.
    pub fn assert_all_synced(&self, expected: &[(PathBuf, Vec<u8>)]) {
        let files = self.h.files();
        for (path, bytes) in expected {
            let shown = path.display().to_string();
            let rows: Vec<&Value> = files
                .iter()
                .filter(|f| f["path"] == shown.as_str())
                .collect();
            assert_eq!(rows.len(), 1, "{shown}: once in the journal");
            assert_eq!(rows[0]["state"], "synced", "{}", rows[0]);
            assert_eq!(
                self.held(rows[0]).as_ref(),
                Some(bytes),
                "the vendor holds the exact bytes: {}",
                rows[0]
            );
        }
    }
}
