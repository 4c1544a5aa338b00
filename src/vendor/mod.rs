//! Vendor adapters: the only code that knows each vendor's wire format. Every adapter answers in
//! the same taxonomy ([`Outcome`]) and paces itself with its vendor's documented limits.

pub mod kingdee;
mod outcome;
mod ratelimit;
mod token;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use outcome::{Call, Outcome};

use crate::config::{VendorConfig, VendorKind, VendorSettings};
use crate::image::{ImageFormat, ImageInfo};
use crate::journal::Remote;

/// What a vendor accepts; files outside it are rejected before any request is made.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub formats: &'static [ImageFormat],
    pub min_bytes: u64,
    pub max_bytes: u64,
    /// Smallest and largest width and height, in pixels.
    pub min_px: Option<u32>,
    pub max_px: Option<u32>,
}

impl Limits {
    /// Why the vendor would refuse a file of `size` bytes for its size alone; checked before a file
    /// is read, so a huge one is never loaded.
    pub fn size_refusal(&self, vendor: &str, size: u64) -> Option<String> {
        (size > self.max_bytes).then(|| {
            format!(
                "too large for {vendor}: {size} bytes, the limit is {} bytes",
                self.max_bytes
            )
        })
    }

    /// Why the vendor would refuse this file, if it would.
    pub fn refusal(&self, vendor: &str, size: u64, info: &ImageInfo) -> Option<String> {
        if !self.formats.contains(&info.format) {
            return Some(format!("{vendor} does not accept {} images", info.format));
        }
        if size < self.min_bytes {
            return Some(format!(
                "too small for {vendor}: {size} bytes, the minimum is {}",
                self.min_bytes
            ));
        }
        if let Some(refusal) = self.size_refusal(vendor, size) {
            return Some(refusal);
        }
        let (w, h) = (info.width, info.height);
        if let Some(min) = self.min_px.filter(|&m| w < m || h < m) {
            return Some(format!(
                "too small for {vendor}: {w}×{h} px, each side must be at least {min} px"
            ));
        }
        if let Some(max) = self.max_px.filter(|&m| w > m || h > m) {
            return Some(format!(
                "too large for {vendor}: {w}×{h} px, each side must be at most {max} px"
            ));
        }
        None
    }
}

/// One file on its way to a vendor.
#[derive(Debug)]
pub struct UploadRequest<'a> {
    pub path: &'a Path,
    pub bytes: &'a [u8],
    pub format: ImageFormat,
}

impl UploadRequest<'_> {
    /// The file's name; one without a suffix gets the one its content calls for.
    pub fn file_name_with_suffix(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".to_string());
        if Path::new(&name).extension().is_some() {
            name
        } else {
            format!("{name}.{}", self.format.extension())
        }
    }
}

/// A configured vendor's adapter.
#[derive(Debug)]
pub enum Adapter {
    Kingdee(kingdee::Kingdee),
}

impl Adapter {
    pub fn new(config: &VendorConfig, http: reqwest::Client) -> Adapter {
        match &config.settings {
            VendorSettings::Kingdee(k) => Adapter::Kingdee(kingdee::Kingdee::new(
                &config.base_url,
                k.clone(),
                http,
                config.per_second,
                config.per_minute,
            )),
        }
    }

    pub fn kind(&self) -> VendorKind {
        match self {
            Adapter::Kingdee(_) => VendorKind::Kingdee,
        }
    }

    pub fn limits(&self) -> Limits {
        match self {
            Adapter::Kingdee(_) => kingdee::LIMITS,
        }
    }

    pub async fn upload(&self, request: &UploadRequest<'_>) -> Call<Remote> {
        match self {
            Adapter::Kingdee(k) => k.upload(request).await,
        }
    }

    /// Deletes what an upload returned (`remote_ref`: the URL for Kingdee).
    pub async fn delete(&self, remote_ref: &str) -> Call<()> {
        match self {
            Adapter::Kingdee(k) => k.delete(remote_ref).await,
        }
    }

    pub async fn check_online(&self) -> Call<()> {
        match self {
            Adapter::Kingdee(k) => k.check_online().await,
        }
    }

    /// After a reload: forget remembered failures, so paused vendors are really tried again.
    pub async fn forget_failures(&self) {
        match self {
            Adapter::Kingdee(k) => k.forget_failures().await,
        }
    }
}

/// The configured vendors' adapters by name, swapped on reload while workers hold their own `Arc`s.
#[derive(Debug, Default)]
pub struct VendorSet(RwLock<BTreeMap<String, Arc<Adapter>>>);

impl VendorSet {
    pub fn get(&self, name: &str) -> Option<Arc<Adapter>> {
        self.read().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    pub fn replace(&self, adapters: BTreeMap<String, Arc<Adapter>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = adapters;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Adapter>>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The HTTP client every adapter shares: rustls, bounded connect and total times.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .user_agent(concat!("imgsyncd/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// `Retry-After` (seconds) or Feishu's `x-ogw-ratelimit-reset`.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    ["retry-after", "x-ogw-ratelimit-reset"]
        .iter()
        .find_map(|name| {
            headers
                .get(*name)?
                .to_str()
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(Duration::from_secs)
}

pub(crate) fn epoch_ms() -> i64 {
    crate::journal::now_ms()
}
