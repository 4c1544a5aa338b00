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
    let (width, height) = match format {
        // imagesize reads a BMP's height unsigned: a top-down bitmap (a negative height) came out
        // some 4.29 billion pixels tall, and one with an OS/2 header made no sense at all.
        ImageFormat::Bmp => bmp::size(bytes).ok_or_else(|| truncated_or_corrupt(format, bytes))?,
        _ => {
            let size = imagesize::blob_size(bytes).map_err(|e| match e {
                // The header runs past the end of the file: cut, however large (a JPEG with
                // 30 KB of EXIF cut at 20 KB), not damaged.
                imagesize::ImageError::IoError(e)
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    ImageError::Truncated(format)
                }
                _ => truncated_or_corrupt(format, bytes),
            })?;
            let side = |n: usize| u32::try_from(n).map_err(|_| ImageError::Corrupt(format));
            (side(size.width)?, side(size.height)?)
        }
    };
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format));
    }
    if !is_complete(format, bytes) {
        return Err(ImageError::Truncated(format));
    }
    Ok(ImageInfo {
        format,
        width,
        height,
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
        ImageFormat::Gif => gif_has_end(bytes),
        ImageFormat::Bmp => bmp::has_end(bytes),
        ImageFormat::Webp => {
            u32_at(bytes, 4).is_some_and(|n| bytes.len() as u64 >= u64::from(n) + 8)
        }
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

/// Walks the GIF's blocks (extensions, images with their colour tables and data sub-blocks) to
/// its trailer. Looking only at the file's last byte took a cut that happened to end in 0x3B
/// (one cut in 256) for a whole file, and refused a whole one with anything after its trailer.
fn gif_has_end(bytes: &[u8]) -> bool {
    /// The bytes a colour table takes, from the packed field that declares it.
    fn colour_table(packed: u8) -> usize {
        match packed & 0x80 {
            0 => 0,
            _ => 3 << ((packed & 0x07) + 1),
        }
    }
    /// Where the data sub-blocks starting at `at` end (after their zero terminator).
    fn after_sub_blocks(bytes: &[u8], mut at: usize) -> Option<usize> {
        loop {
            let len = usize::from(*bytes.get(at)?);
            at += 1 + len;
            if len == 0 {
                return Some(at);
            }
        }
    }
    // "GIF89a", then the logical screen descriptor: its packed field at 10.
    let Some(&screen) = bytes.get(10) else {
        return false;
    };
    let mut at = 13 + colour_table(screen);
    loop {
        let next = match bytes.get(at) {
            Some(0x3B) => return true,
            // An extension: its label, then its sub-blocks.
            Some(0x21) => after_sub_blocks(bytes, at + 2),
            // An image: its descriptor (packed field at 9), local colour table, the LZW code
            // size, then its data sub-blocks.
            Some(0x2C) => bytes
                .get(at + 9)
                .and_then(|&packed| after_sub_blocks(bytes, at + 10 + colour_table(packed) + 1)),
            // A stray zero between blocks, which old encoders leave and viewers step over.
            Some(0x00) => Some(at + 1),
            _ => None,
        };
        match next {
            Some(next) => at = next,
            None => return false,
        }
    }
}

/// BMP: a 14-byte file header (its pixel data's offset at 10), then the bitmap's own header
/// (its size first: 12 for OS/2's, 40 or more for Windows').
mod bmp {
    use super::{u16_at, u32_at};

    struct Header {
        width: u32,
        height: u32,
        bits_per_pixel: u16,
        /// 0 (none) or 3 (bit fields, not compressed either); RLE and others are compressed.
        compression: u32,
        image_size: u32,
    }

    fn header(bytes: &[u8]) -> Option<Header> {
        match u32_at(bytes, 14)? {
            12 => Some(Header {
                width: u32::from(u16_at(bytes, 18)?),
                height: u32::from(u16_at(bytes, 20)?),
                bits_per_pixel: u16_at(bytes, 24)?,
                compression: 0,
                image_size: 0,
            }),
            // Windows' (40 and up) and OS/2 2.x's (16 to 64): the fields past 16 bytes only when
            // the header holds them.
            size @ 16.. => Some(Header {
                width: (u32_at(bytes, 18)? as i32).unsigned_abs(),
                // Negative: the rows run top-down.
                height: (u32_at(bytes, 22)? as i32).unsigned_abs(),
                bits_per_pixel: u16_at(bytes, 28)?,
                compression: if size >= 20 { u32_at(bytes, 30)? } else { 0 },
                image_size: if size >= 24 { u32_at(bytes, 34)? } else { 0 },
            }),
            _ => None,
        }
    }

    pub(super) fn size(bytes: &[u8]) -> Option<(u32, u32)> {
        header(bytes).map(|h| (h.width, h.height))
    }

    /// Whether the pixel data is all there: for an uncompressed bitmap, its rows (each padded to
    /// four bytes) from the offset the file header gives; for a compressed one, the size its
    /// header gives, or else the file's declared size. (The declared file size alone is 0 in
    /// some writers' files, which let a cut one through.)
    pub(super) fn has_end(bytes: &[u8]) -> bool {
        let (Some(h), Some(offset)) = (header(bytes), u32_at(bytes, 10)) else {
            return false;
        };
        let offset = u64::from(offset);
        let needed = match h.compression {
            0 | 3 => {
                let row = (u64::from(h.width) * u64::from(h.bits_per_pixel)).div_ceil(32) * 4;
                offset + row * u64::from(h.height)
            }
            _ if h.image_size > 0 => offset + u64::from(h.image_size),
            _ => u64::from(u32_at(bytes, 2).unwrap_or(0)),
        };
        bytes.len() as u64 >= needed
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
    use super::{
        ImageError, ImageFormat, ImageInfo, PNG_MAGIC, truncated_or_corrupt, u16_at, u32_at,
    };

    const HEADER: usize = 6;
    const ENTRY: usize = 16;

    struct Entry {
        width: u32,
        height: u32,
        size: usize,
        offset: usize,
    }

    /// A little-endian u32 at `at`, as a size or an offset.
    fn usize_at(bytes: &[u8], at: usize) -> Option<usize> {
        usize::try_from(u32_at(bytes, at)?).ok()
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
                    size: usize_at(bytes, at + 8).unwrap_or(0),
                    offset: usize_at(bytes, at + 12).unwrap_or(0),
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

/// A little-endian u16 at `at` (BMP, ICO and WebP headers are little-endian).
fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// A little-endian u32 at `at`.
fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
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
    fn a_jpeg_cut_inside_a_large_exif_block_is_truncated_not_corrupt() {
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x75, 0x30];
        jpeg.extend(std::iter::repeat_n(0x45, 20_000));
        assert_eq!(
            inspect(&jpeg),
            Err(ImageError::Truncated(ImageFormat::Jpeg))
        );
    }

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

    /// A 1×1 GIF whose image data holds `data` in one sub-block, with its trailer.
    fn gif_holding(data: &[u8]) -> Vec<u8> {
        let mut gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00".to_vec();
        gif.extend_from_slice(&[0; 6]);
        // A graphic control extension, then the image.
        gif.extend_from_slice(b"!\xF9\x04\x00\x00\x00\x00\x00");
        gif.extend_from_slice(b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02");
        gif.push(data.len() as u8);
        gif.extend_from_slice(data);
        gif.extend_from_slice(&[0x00, 0x3B]);
        gif
    }

    #[test]
    fn a_gif_cut_where_a_byte_reads_as_its_trailer_is_truncated() {
        let whole = gif_holding(&[0x44, 0x3B, 0x01, 0x3B, 0x02]);
        assert!(inspect(&whole).is_ok());
        // Cut right after a data byte that happens to be 0x3B: the last byte looks like the end.
        let cut = &whole[..whole.len() - 5];
        assert_eq!(cut.last(), Some(&0x3B));
        assert_eq!(inspect(cut), Err(ImageError::Truncated(ImageFormat::Gif)));
        // And a cut padded with zeros, as a file sized before it was written.
        let mut padded = cut.to_vec();
        padded.extend_from_slice(&[0; 32]);
        assert_eq!(
            inspect(&padded),
            Err(ImageError::Truncated(ImageFormat::Gif))
        );
        // Anything after the trailer is allowed, as after any format's end.
        let mut trailing = whole.clone();
        trailing.extend_from_slice(b"\n");
        assert!(inspect(&trailing).is_ok());
        // A stray zero between the image and the trailer, as old encoders leave.
        let mut stray = whole[..whole.len() - 1].to_vec();
        stray.extend_from_slice(&[0x00, 0x3B]);
        assert!(inspect(&stray).is_ok());
    }

    /// A 24-bit BMP `width` wide and `height` tall (negative: top-down), its file size field
    /// `declared` (None: the real size), `cut` bytes short.
    fn bmp(width: i32, height: i32, declared: Option<u32>, cut: usize) -> Vec<u8> {
        let row = (width as usize * 3).div_ceil(4) * 4;
        let len = 54 + row * height.unsigned_abs() as usize;
        let mut out = b"BM".to_vec();
        out.extend_from_slice(&declared.unwrap_or(len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&54u32.to_le_bytes());
        out.extend_from_slice(&40u32.to_le_bytes());
        out.extend_from_slice(&width.to_le_bytes());
        out.extend_from_slice(&height.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&24u16.to_le_bytes());
        out.extend_from_slice(&[0; 24]);
        out.resize(len - cut, 0x80);
        out
    }

    #[test]
    fn a_top_down_bmp_has_its_height() {
        let info = inspect(&bmp(800, -600, None, 0)).unwrap();
        assert_eq!((info.width, info.height), (800, 600));
        let info = inspect(&bmp(3, 2, None, 0)).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
    }

    #[test]
    fn a_cut_bmp_is_truncated_whatever_size_it_declares() {
        assert_eq!(
            inspect(&bmp(30, 20, None, 1)),
            Err(ImageError::Truncated(ImageFormat::Bmp))
        );
        // Some writers declare a file size of 0: the rows still say how long it is.
        assert!(inspect(&bmp(30, 20, Some(0), 0)).is_ok());
        assert_eq!(
            inspect(&bmp(30, 20, Some(0), 100)),
            Err(ImageError::Truncated(ImageFormat::Bmp))
        );
    }

    #[test]
    fn an_os2_bmp_is_measured_by_its_own_header() {
        let mut os2 = b"BM".to_vec();
        os2.extend_from_slice(&[0; 8]);
        os2.extend_from_slice(&26u32.to_le_bytes());
        os2.extend_from_slice(&12u32.to_le_bytes());
        os2.extend_from_slice(&4u16.to_le_bytes());
        os2.extend_from_slice(&2u16.to_le_bytes());
        os2.extend_from_slice(&1u16.to_le_bytes());
        os2.extend_from_slice(&24u16.to_le_bytes());
        os2.resize(26 + 12 * 2, 0x10);
        let info = inspect(&os2).unwrap();
        assert_eq!((info.width, info.height), (4, 2));
        assert_eq!(
            inspect(&os2[..os2.len() - 1]),
            Err(ImageError::Truncated(ImageFormat::Bmp))
        );
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
