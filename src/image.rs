//! What a file is, judged by its bytes: the format (sniffed, never taken from the name), the pixel
//! dimensions, and whether the file is whole (a truncated image is refused before any vendor sees it).
//! Only headers are read: pixels are never decoded.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Gif,
    Bmp,
    Webp,
    /// A Windows icon (`.ico`); Feishu lingo takes it, Kingdee does not.
    Ico,
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 6] = [
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Webp,
        ImageFormat::Ico,
    ];

    /// The subtype in `image/<subtype>` (what the journal records as the file's format).
    pub fn mime_subtype(self) -> &'static str {
        match self {
            ImageFormat::Ico => "vnd.microsoft.icon",
            other => other.name(),
        }
    }

    /// The short name people use: `jpeg`, `png`, `gif`, `bmp`, `webp`, `ico`.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Gif => "gif",
            ImageFormat::Bmp => "bmp",
            ImageFormat::Webp => "webp",
            ImageFormat::Ico => "ico",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            other => other.name(),
        }
    }

    /// The format a file name's extension names, if it names one (`JPG`, `jpeg`, `ico`, …).
    pub fn from_extension(extension: &str) -> Option<Self> {
        let lower = extension.to_ascii_lowercase();
        match lower.as_str() {
            "jpg" | "jpeg" | "jpe" => Some(ImageFormat::Jpeg),
            other => ImageFormat::ALL.into_iter().find(|f| f.name() == other),
        }
    }

    /// Reads back what [`mime_subtype`](Self::mime_subtype) (or [`name`](Self::name)) gave.
    pub fn from_mime_subtype(subtype: &str) -> Option<Self> {
        ImageFormat::ALL
            .into_iter()
            .find(|f| f.mime_subtype() == subtype || f.name() == subtype)
            .or_else(|| (subtype == "x-icon").then_some(ImageFormat::Ico))
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the file is empty")]
    Empty,
    #[error("not an image (the content is not jpeg, png, gif, bmp, webp or ico)")]
    NotAnImage,
    #[error("{0} images are not accepted (only jpeg, png, gif, bmp, webp and ico)")]
    UnsupportedFormat(String),
    #[error("truncated {0}: the file ends before the image does")]
    Truncated(ImageFormat),
    #[error("corrupt {0}: its header cannot be read")]
    Corrupt(ImageFormat),
}

/// Sniffs `bytes` and checks the image is complete.
pub fn inspect(bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.starts_with(ICO_MAGIC) {
        return ico::inspect(bytes);
    }
    let format = match imagesize::image_type(bytes) {
        Ok(imagesize::ImageType::Jpeg) => ImageFormat::Jpeg,
        Ok(imagesize::ImageType::Png) => ImageFormat::Png,
        Ok(imagesize::ImageType::Gif) => ImageFormat::Gif,
        Ok(imagesize::ImageType::Bmp) => ImageFormat::Bmp,
        Ok(imagesize::ImageType::Webp) => ImageFormat::Webp,
        Ok(other) => {
            return Err(ImageError::UnsupportedFormat(
                format!("{other:?}").to_lowercase(),
            ));
        }
        Err(_) => return Err(ImageError::NotAnImage),
    };
    let size = imagesize::blob_size(bytes).map_err(|_| truncated_or_corrupt(format, bytes))?;
    if size.width == 0 || size.height == 0 {
        return Err(ImageError::Corrupt(format));
    }
    if !is_complete(format, bytes) {
        return Err(ImageError::Truncated(format));
    }
    Ok(ImageInfo {
        format,
        width: u32::try_from(size.width).map_err(|_| ImageError::Corrupt(format))?,
        height: u32::try_from(size.height).map_err(|_| ImageError::Corrupt(format))?,
    })
}

fn truncated_or_corrupt(format: ImageFormat, bytes: &[u8]) -> ImageError {
    // A header that cannot be read in a tiny file was cut short; in a large one it is damaged.
    if bytes.len() < 1024 {
        ImageError::Truncated(format)
    } else {
        ImageError::Corrupt(format)
    }
}

/// Whether the file reaches the end its format defines. Cameras and editors may append data after
/// the end (Samsung's JPEG trailers, padding), so what follows the end is allowed.
fn is_complete(format: ImageFormat, bytes: &[u8]) -> bool {
    match format {
        ImageFormat::Jpeg => jpeg_has_end(bytes),
        ImageFormat::Png => png_has_end(bytes),
        ImageFormat::Gif => {
            let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            bytes[..end].ends_with(&[0x3B])
        }
        ImageFormat::Bmp => declared_len(bytes, 2).is_none_or(|n| n == 0 || bytes.len() >= n),
        ImageFormat::Webp => declared_len(bytes, 4).is_some_and(|n| bytes.len() >= n + 8),
        // Checked with its dimensions, in `ico::inspect`.
        ImageFormat::Ico => true,
    }
}

/// Walks the JPEG's segments to its first scan, then looks for the end-of-image marker: inside
/// entropy-coded data a 0xFF byte is always stuffed, so FF D9 there can only be the real end.
/// Thumbnails in APP segments are stepped over, so their own end markers do not count.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let mut at = 2;
    loop {
        let Some(&[0xFF, marker]) = bytes.get(at..at + 2) else {
            return false;
        };
        match marker {
            0xFF => at += 1,
            0xD9 => return true,
            0xD0..=0xD7 | 0x01 => at += 2,
            _ => {
                let Some(len) = bytes.get(at + 2..at + 4) else {
                    return false;
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                at += 2 + len;
                if marker == 0xDA {
                    return bytes
                        .get(at..)
                        .is_some_and(|scan| scan.windows(2).any(|w| w == [0xFF, 0xD9]));
                }
            }
        }
    }
}

/// Walks the PNG's chunks to IEND; a chunk that runs past the end of the file means truncation.
fn png_has_end(bytes: &[u8]) -> bool {
    let mut at = 8;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let end = at.saturating_add(12).saturating_add(len);
        if end > bytes.len() {
            return false;
        }
        if &header[4..8] == b"IEND" {
            return true;
        }
        at = end;
    }
    false
}

/// Reserved 0, type 1 (icon; a cursor is 2).
const ICO_MAGIC: &[u8] = &[0x00, 0x00, 0x01, 0x00];
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// ICO: a 6-byte header, 16-byte directory entries, then each entry's image (a BMP without its
/// file header, or a whole PNG). Only the header and the directory are read, and a PNG entry's IHDR.
mod ico {
    use super::{ImageError, ImageFormat, ImageInfo, PNG_MAGIC, truncated_or_corrupt};

    const HEADER: usize = 6;
    const ENTRY: usize = 16;

    struct Entry {
        width: u32,
        height: u32,
        size: usize,
        offset: usize,
    }

    fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
        let v = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
        usize::try_from(v).ok()
    }

    /// The dimensions from the first directory entry (0 stands for 256); when that entry holds a
    /// PNG, the PNG's own header (a PNG entry may be larger than the directory's byte can say).
    pub fn inspect(bytes: &[u8]) -> Result<ImageInfo, ImageError> {
        let corrupt = || ImageError::Corrupt(ImageFormat::Ico);
        let count = usize::from(
            u16_at(bytes, 4).ok_or_else(|| truncated_or_corrupt(ImageFormat::Ico, bytes))?,
        );
        if count == 0 {
            return Err(corrupt());
        }
        let directory_end = HEADER + count * ENTRY;
        if bytes.len() < directory_end {
            return Err(truncated_or_corrupt(ImageFormat::Ico, bytes));
        }
        let entries: Vec<Entry> = (0..count)
            .map(|i| {
                let at = HEADER + i * ENTRY;
                let side = |b: u8| if b == 0 { 256 } else { u32::from(b) };
                Entry {
                    width: side(bytes[at]),
                    height: side(bytes[at + 1]),
                    size: u32_at(bytes, at + 8).unwrap_or(0),
                    offset: u32_at(bytes, at + 12).unwrap_or(0),
                }
            })
            .collect();
        for entry in &entries {
            if entry.size == 0 || entry.offset < directory_end {
                return Err(corrupt());
            }
            if entry.offset.saturating_add(entry.size) > bytes.len() {
                return Err(ImageError::Truncated(ImageFormat::Ico));
            }
        }
        let first = &entries[0];
        let data = &bytes[first.offset..first.offset + first.size];
        let (width, height) = if data.starts_with(PNG_MAGIC) {
            if !super::png_has_end(data) {
                return Err(ImageError::Truncated(ImageFormat::Ico));
            }
            let ihdr = data
                .get(8..24)
                .filter(|h| &h[4..8] == b"IHDR")
                .ok_or_else(corrupt)?;
            let side = |at: usize| {
                u32::from_be_bytes([ihdr[at], ihdr[at + 1], ihdr[at + 2], ihdr[at + 3]])
            };
            (side(8), side(12))
        } else {
            (first.width, first.height)
        };
        if width == 0 || height == 0 {
            return Err(corrupt());
        }
        Ok(ImageInfo {
            format: ImageFormat::Ico,
            width,
            height,
        })
    }
}

/// A little-endian u32 length field at `offset`.
fn declared_len(bytes: &[u8], offset: usize) -> Option<usize> {
    let field: [u8; 4] = bytes.get(offset..offset + 4)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(field)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1×1 PNG, byte for byte.
    const PNG_1X1: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F,
        0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00,
        0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49,
        0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];

    #[test]
    fn a_whole_png_is_sniffed_with_its_size() {
        let info = inspect(PNG_1X1).unwrap();
        assert_eq!(info.format, ImageFormat::Png);
        assert_eq!((info.width, info.height), (1, 1));
    }

    #[test]
    fn a_cut_png_is_truncated() {
        let cut = &PNG_1X1[..PNG_1X1.len() - 10];
        assert_eq!(inspect(cut), Err(ImageError::Truncated(ImageFormat::Png)));
    }

    #[test]
    fn empty_and_text_files_are_refused() {
        assert_eq!(inspect(b""), Err(ImageError::Empty));
        assert_eq!(
            inspect(b"hello, this is text\n"),
            Err(ImageError::NotAnImage)
        );
    }

    /// The segment skeleton of a JPEG (the walker reads no more): SOI, an APP1 holding a thumbnail
    /// with its own EOI, SOS, scan data with a stuffed FF00, EOI.
    fn jpeg_with_thumbnail() -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8];
        j.extend_from_slice(&[0xFF, 0xE1, 0x00, 0x08, 0xFF, 0xD8, 0xAA, 0xBB, 0xFF, 0xD9]);
        j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x04, 0x01, 0x00]);
        j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34]);
        j.extend_from_slice(&[0xFF, 0xD9]);
        j
    }

    #[test]
    fn a_jpeg_end_is_found_past_thumbnails_and_before_trailers() {
        let whole = jpeg_with_thumbnail();
        assert!(jpeg_has_end(&whole));
        let mut trailer = whole.clone();
        trailer.extend_from_slice(b"SEFT trailer data from a phone");
        assert!(jpeg_has_end(&trailer), "data after the end is allowed");
        let cut = &whole[..whole.len() - 2];
        assert!(
            !jpeg_has_end(cut),
            "the thumbnail's end marker does not count"
        );
    }

    #[test]
    fn a_png_with_trailing_data_is_whole() {
        let mut png = PNG_1X1.to_vec();
        png.extend_from_slice(b"appended");
        assert!(inspect(&png).is_ok());
    }

    #[test]
    fn a_gif_without_trailer_is_truncated() {
        let mut gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00".to_vec();
        gif.extend_from_slice(&[0; 6]);
        gif.extend_from_slice(b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00");
        assert_eq!(inspect(&gif), Err(ImageError::Truncated(ImageFormat::Gif)));
        gif.push(0x3B);
        assert_eq!(inspect(&gif).unwrap().format, ImageFormat::Gif);
    }

    /// An ICO with one entry: `w`, `h` as the directory's bytes, `data` as the image.
    fn ico(w: u8, h: u8, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 1, 0, 1, 0];
        out.extend_from_slice(&[w, h, 0, 0, 1, 0, 32, 0]);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&22u32.to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn an_ico_is_measured_by_its_first_directory_entry() {
        let bmp_entry = vec![0x28; 64];
        let info = inspect(&ico(48, 32, &bmp_entry)).unwrap();
        assert_eq!(info.format, ImageFormat::Ico);
        assert_eq!((info.width, info.height), (48, 32));
        let info = inspect(&ico(0, 0, &bmp_entry)).unwrap();
        assert_eq!((info.width, info.height), (256, 256), "0 means 256");
        // A second, larger entry does not count: the first one does.
        let mut two = vec![0, 0, 1, 0, 2, 0];
        for (side, offset) in [(16u8, 38u32), (64, 38 + 64)] {
            two.extend_from_slice(&[side, side, 0, 0, 1, 0, 32, 0]);
            two.extend_from_slice(&64u32.to_le_bytes());
            two.extend_from_slice(&offset.to_le_bytes());
        }
        two.extend_from_slice(&[0x28; 128]);
        assert_eq!(inspect(&two).unwrap().width, 16);
    }

    #[test]
    fn an_ico_holding_a_png_takes_the_pngs_size() {
        let mut big_png = PNG_1X1.to_vec();
        // Rewrite IHDR to 512×300 (the CRC is not checked: only the header is read).
        big_png[16..20].copy_from_slice(&512u32.to_be_bytes());
        big_png[20..24].copy_from_slice(&300u32.to_be_bytes());
        let info = inspect(&ico(0, 0, &big_png)).unwrap();
        assert_eq!(
            (info.format, info.width, info.height),
            (ImageFormat::Ico, 512, 300)
        );
        let cut = &big_png[..big_png.len() - 12];
        assert_eq!(
            inspect(&ico(0, 0, cut)),
            Err(ImageError::Truncated(ImageFormat::Ico)),
            "a PNG entry without IEND is cut"
        );
    }

    #[test]
    fn a_cut_or_broken_ico_is_refused() {
        let whole = ico(32, 32, &[0x28; 64]);
        assert_eq!(
            inspect(&whole[..whole.len() - 1]),
            Err(ImageError::Truncated(ImageFormat::Ico))
        );
        assert_eq!(
            inspect(&whole[..10]),
            Err(ImageError::Truncated(ImageFormat::Ico)),
            "the directory itself is cut"
        );
        assert_eq!(
            inspect(&[0, 0, 1, 0, 0, 0, 1, 2, 3]),
            Err(ImageError::Corrupt(ImageFormat::Ico)),
            "no entries"
        );
    }

    #[test]
    fn formats_round_trip_through_the_journal_and_names() {
        for format in ImageFormat::ALL {
            assert_eq!(
                ImageFormat::from_mime_subtype(format.mime_subtype()),
                Some(format)
            );
            assert_eq!(
                ImageFormat::from_extension(format.extension()),
                Some(format)
            );
        }
        assert_eq!(ImageFormat::from_extension("JPEG"), Some(ImageFormat::Jpeg));
        assert_eq!(ImageFormat::from_extension("txt"), None);
        assert_eq!(ImageFormat::Ico.to_string(), "ico");
    }
}
