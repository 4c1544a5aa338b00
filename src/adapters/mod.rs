//! Vendor adapters: the only code that knows each vendor's wire format. Every adapter answers in
//! the same taxonomy ([`Outcome`]) and paces itself with its vendor's documented limits.

pub mod feishu;
pub mod http;
pub mod jiandaoyun;
pub mod kind;
pub mod kingdee;
pub mod name;
mod outcome;
mod ratelimit;
mod token;

#[cfg(test)]
mod fuzz_tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

pub use outcome::{Call, Outcome};

use crate::config::{VendorConfig, VendorSettings};
use crate::image::{ImageFormat, ImageInfo};
use crate::journal::Remote;
pub use http::http_client;
pub use kind::{KindSpec, VendorKind};

/// Asked by a delete at the last moment before its request goes out: a token in hand and its
/// turn in the vendor's pace come (behind a rate limit, a minute or more), whether it still may.
/// Its file may have come back meanwhile, and the copy it would delete is then the one the ERP
/// uses again. A second try (with a fresh token, the first refused) asks again.
pub trait GoAhead: Sync {
    fn may_send(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

/// Asked just before a call that would be wrong to make twice (Jiandaoyun's data/create: a second
/// form record for the same file), with what the call is and what to look for at the vendor. The
/// worker notes it in the journal, so that a daemon stopped before the answer came does not make
/// the call again once restarted, not knowing it had been begun. False: it could not be noted,
/// or the job is no longer to be carried out, and the call is not made.
pub trait PointOfNoReturn: Sync + std::fmt::Debug {
    fn passing(&self, what: String) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
    /// The call was answered with a refusal that carried nothing out, and is to be made again
    /// after a wait: a stop during the wait must not hold the file as if it were in doubt.
    fn refused(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// What a delete answers when its go-ahead was refused: nothing went out.
fn withheld() -> Call<()> {
    Call::new(
        Outcome::Rejected {
            reason: "not sent: the journal withdrew it".into(),
        },
        None,
        None,
    )
    .unsent()
}

/// What a vendor accepts; files outside it are rejected before any request is made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The vendor's own name, for reasons ("below Feishu's 3 KB minimum").
    pub vendor: &'static str,
    pub formats: &'static [ImageFormat],
    pub min_bytes: u64,
    pub max_bytes: u64,
    /// Smallest and largest width and height, in pixels.
    pub min_px: Option<u32>,
    pub max_px: Option<u32>,
}

impl Limits {
    /// Why the vendor would refuse a file of `size` bytes for its size alone; checked before a file
    /// is read, so a huge one is never loaded. `name` is the configured vendor's name.
    pub fn size_refusal(&self, name: &str, size: u64) -> Option<String> {
        (size > self.max_bytes).then(|| {
            let (size, limit) = measured(size, self.max_bytes);
            format!(
                "too large for {name}: {size}: above {}'s {limit} maximum",
                self.vendor
            )
        })
    }

    /// Why the vendor would refuse this file, if it would: the format, the size, then each side.
    pub fn refusal(&self, name: &str, size: u64, info: &ImageInfo) -> Option<String> {
        if !self.formats.contains(&info.format) {
            let taken: Vec<&str> = self.formats.iter().map(|f| f.name()).collect();
            return Some(format!(
                "not accepted by {name}: {} takes {} images, not {}",
                self.vendor,
                taken.join(", "),
                info.format
            ));
        }
        if size < self.min_bytes {
            let (size, limit) = measured(size, self.min_bytes);
            return Some(format!(
                "too small for {name}: {size}: below {}'s {limit} minimum",
                self.vendor
            ));
        }
        if let Some(refusal) = self.size_refusal(name, size) {
            return Some(refusal);
        }
        self.pixel_refusal(name, info.width, info.height)
    }

    /// Each side against the vendor's smallest and largest, named one by one.
    fn pixel_refusal(&self, name: &str, w: u32, h: u32) -> Option<String> {
        let sides = [("width", w), ("height", h)];
        let below: Vec<String> = self
            .min_px
            .map(|min| {
                sides
                    .iter()
                    .filter(|(_, v)| *v < min)
                    .map(|(side, v)| format!("{side} {v}"))
                    .collect()
            })
            .unwrap_or_default();
        let above: Vec<String> = self
            .max_px
            .map(|max| {
                sides
                    .iter()
                    .filter(|(_, v)| *v > max)
                    .map(|(side, v)| format!("{side} {v}"))
                    .collect()
            })
            .unwrap_or_default();
        let verb = |n: usize| if n > 1 { "are" } else { "is" };
        let mut parts = Vec::new();
        if let (Some(min), false) = (self.min_px, below.is_empty()) {
            parts.push(format!(
                "{} {} below {}'s {min} px",
                below.join(" and "),
                verb(below.len()),
                self.vendor
            ));
        }
        if let (Some(max), false) = (self.max_px, above.is_empty()) {
            parts.push(format!(
                "{} {} above {}'s {max} px",
                above.join(" and "),
                verb(above.len()),
                self.vendor
            ));
        }
        let what = match (below.is_empty(), above.is_empty()) {
            (true, true) => return None,
            (false, true) => "too small for",
            (true, false) => "too large for",
            (false, false) => "the wrong size for",
        };
        Some(format!("{what} {name}: {w}×{h} px: {}", parts.join("; ")))
    }
}

/// `2 KB`, `10.5 MB`, `812 bytes`: binary units, one decimal at most.
pub fn human_size(bytes: u64) -> String {
    const KB: f64 = 1024.0;
    let b = bytes as f64;
    let (value, unit) = if bytes < 1024 {
        return format!("{bytes} bytes");
    } else if b < KB * KB {
        (b / KB, "KB")
    } else {
        (b / (KB * KB), "MB")
    };
    let text = format!("{value:.1}");
    format!("{} {unit}", text.trim_end_matches(".0"))
}

/// A measured size and the limit it broke, exact to the byte when rounding would make them look equal.
fn measured(size: u64, limit: u64) -> (String, String) {
    let (shown, bound) = (human_size(size), human_size(limit));
    if shown == bound {
        (format!("{size} bytes"), format!("{bound} ({limit} bytes)"))
    } else {
        (shown, bound)
    }
}

/// One file on its way to a vendor.
#[derive(Debug)]
pub struct UploadRequest<'a> {
    pub path: &'a Path,
    pub bytes: &'a [u8],
    pub format: ImageFormat,
    /// Asked before a call that must not be made twice; `None`: make it without asking.
    pub no_return: Option<&'a dyn PointOfNoReturn>,
}

impl UploadRequest<'_> {
    /// The file's name; one without a suffix gets the one its content calls for.
    pub fn file_name_with_suffix(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| name::for_vendor(n).into_owned())
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
    Feishu(feishu::Feishu),
    Jiandaoyun(jiandaoyun::Jiandaoyun),
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
            VendorSettings::Feishu(f) => Adapter::Feishu(feishu::Feishu::new(
                &config.base_url,
                f.clone(),
                http,
                config.per_second,
                config.per_minute,
            )),
            VendorSettings::Jiandaoyun(j) => Adapter::Jiandaoyun(jiandaoyun::Jiandaoyun::new(
                &config.name,
                &config.base_url,
                j.clone(),
                http,
                config.per_second,
                config.per_minute,
            )),
        }
    }

    pub fn kind(&self) -> VendorKind {
        match self {
            Adapter::Kingdee(_) => VendorKind::Kingdee,
            Adapter::Feishu(_) => VendorKind::Feishu,
            Adapter::Jiandaoyun(_) => VendorKind::Jiandaoyun,
        }
    }

    /// Whether a live copy of the same bytes may serve another file instead of an upload.
    pub fn reuses_copies(&self) -> bool {
        match self {
            Adapter::Jiandaoyun(j) => j.reuses_copies(),
            _ => true,
        }
    }

    pub fn limits(&self) -> Limits {
        self.kind().spec().limits
    }

    pub async fn upload(&self, request: &UploadRequest<'_>) -> Call<Remote> {
        match self {
            Adapter::Kingdee(k) => k.upload(request).await,
            Adapter::Feishu(f) => f.upload(request).await,
            Adapter::Jiandaoyun(j) => j.upload(request).await,
        }
    }

    /// Deletes what an upload returned (`remote_ref`: the URL for Kingdee), if `go_ahead` still
    /// allows it when the request is ready to go. A vendor without a delete API
    /// ([`VendorKind::can_delete`]) refuses, and the remote copy is kept.
    pub async fn delete(&self, remote_ref: &str, go_ahead: &dyn GoAhead) -> Call<()> {
        match self {
            Adapter::Kingdee(k) => k.delete(remote_ref, go_ahead).await,
            // The journal settles a delete it no longer wants (the file back, the watch's policy
            // changed) before the vendor is asked to do what it cannot.
            _ if !go_ahead.may_send().await => withheld(),
            Adapter::Feishu(_) => Call::new(
                Outcome::Rejected {
                    reason: "feishu lingo has no file delete API; the remote copy is kept".into(),
                },
                None,
                None,
            ),
            Adapter::Jiandaoyun(_) => Call::new(
                Outcome::Rejected {
                    reason: "jiandaoyun has no file delete API; the key is kept".into(),
                },
                None,
                None,
            ),
        }
    }

    pub async fn check_online(&self) -> Call<()> {
        match self {
            Adapter::Kingdee(k) => k.check_online().await,
            Adapter::Feishu(f) => f.check_online().await,
            Adapter::Jiandaoyun(j) => j.check_online().await,
        }
    }

    /// After a reload: forget remembered failures, so paused vendors are really tried again.
    pub async fn forget_failures(&self) {
        match self {
            Adapter::Kingdee(k) => k.forget_failures().await,
            Adapter::Feishu(f) => f.forget_failures().await,
            Adapter::Jiandaoyun(j) => j.forget_failures().await,
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

    /// How many vendors are configured.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub fn replace(&self, adapters: BTreeMap<String, Arc<Adapter>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = adapters;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Adapter>>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) fn epoch_ms() -> i64 {
    crate::journal::now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(format: ImageFormat, width: u32, height: u32) -> ImageInfo {
        ImageInfo {
            format,
            width,
            height,
        }
    }

    #[test]
    fn sizes_are_shown_in_units_people_read() {
        assert_eq!(human_size(812), "812 bytes");
        assert_eq!(human_size(2048), "2 KB");
        assert_eq!(human_size(2100), "2.1 KB");
        assert_eq!(human_size(10 * 1024 * 1024), "10 MB");
        assert_eq!(human_size(11 * 1024 * 1024 + 512 * 1024), "11.5 MB");
    }

    #[test]
    fn feishu_refusals_are_measured_and_per_side() {
        let l = feishu::LIMITS;
        let png = |w, h| info(ImageFormat::Png, w, h);
        assert_eq!(
            l.refusal("wiki", 50_000, &png(1000, 200)).unwrap(),
            "too small for wiki: 1000×200 px: height 200 is below Feishu's 320 px"
        );
        assert_eq!(
            l.refusal("wiki", 50_000, &png(100, 100)).unwrap(),
            "too small for wiki: 100×100 px: width 100 and height 100 are below Feishu's 320 px"
        );
        assert_eq!(
            l.refusal("wiki", 50_000, &png(5000, 400)).unwrap(),
            "too large for wiki: 5000×400 px: width 5000 is above Feishu's 4096 px"
        );
        assert_eq!(
            l.refusal("wiki", 50_000, &png(5000, 100)).unwrap(),
            "the wrong size for wiki: 5000×100 px: height 100 is below Feishu's 320 px; \
             width 5000 is above Feishu's 4096 px"
        );
        assert_eq!(
            l.refusal("wiki", 2048, &png(400, 400)).unwrap(),
            "too small for wiki: 2 KB: below Feishu's 3 KB minimum"
        );
        assert_eq!(
            l.refusal("wiki", 3071, &png(400, 400)).unwrap(),
            "too small for wiki: 3071 bytes: below Feishu's 3 KB (3072 bytes) minimum",
            "rounding never makes the two look equal"
        );
        assert_eq!(
            l.size_refusal("wiki", 11 * 1024 * 1024).unwrap(),
            "too large for wiki: 11 MB: above Feishu's 10 MB maximum"
        );
        assert_eq!(l.refusal("wiki", 3072, &png(320, 4096)), None);
        assert_eq!(
            l.refusal("wiki", 50_000, &info(ImageFormat::Ico, 512, 512)),
            None
        );
    }

    #[test]
    fn kingdee_refusals_name_kingdee() {
        let l = kingdee::LIMITS;
        assert_eq!(
            l.size_refusal("erp", 11 * 1024 * 1024).unwrap(),
            "too large for erp: 11 MB: above Kingdee's 10 MB maximum"
        );
        assert_eq!(
            l.refusal("erp", 5000, &info(ImageFormat::Ico, 32, 32))
                .unwrap(),
            "not accepted by erp: Kingdee takes jpeg, png, gif, bmp, webp images, not ico"
        );
        assert_eq!(l.refusal("erp", 5000, &info(ImageFormat::Png, 1, 1)), None);
    }
}
