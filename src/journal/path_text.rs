//! How the journal writes a path as text, and reads it back, for every name a folder can hold.
//!
//! Linux names are bytes. A name that is not UTF-8 is common in drop folders: a zip made on a
//! Chinese Windows desktop unpacks to GBK names (`\xB2\xFA\xC6\xB7.jpg` for 产品.jpg). The journal
//! keeps paths as text, so each byte that is not part of valid UTF-8 is written as one character
//! of Unicode's last private-use block (U+10FF80..U+10FFFF, the byte's own value in the low
//! eight bits). A valid name maps to itself, so journals written before this need no change. The
//! only names that do not map to themselves are those that already hold one of these 128
//! characters: their bytes are escaped the same way, so reading back is exact for every name.
//! A directory's text is a prefix of its files' texts, since `/` is never escaped.

use std::borrow::Cow;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The first character of the block that stands for raw bytes: U+10FF00 + byte, bytes 0x80..=0xFF.
const ESCAPE_BASE: u32 = 0x10_FF00;
const ESCAPED: std::ops::RangeInclusive<char> = '\u{10FF80}'..='\u{10FFFF}';

/// Whether `text` holds a character that stands for a raw byte (or is one escaped).
fn has_escapes(text: &str) -> bool {
    text.chars().any(|c| ESCAPED.contains(&c))
}

/// The text the journal records for `path`.
pub fn to_text(path: &Path) -> Cow<'_, str> {
    let bytes = path.as_os_str().as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(text) if !has_escapes(text) => Cow::Borrowed(text),
        _ => Cow::Owned(escape(bytes)),
    }
}

fn escape(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match ESCAPED.contains(&c) {
                true => c
                    .encode_utf8(&mut [0; 4])
                    .bytes()
                    .for_each(|b| text.push(escaped(b))),
                false => text.push(c),
            }
        }
        chunk.invalid().iter().for_each(|&b| text.push(escaped(b)));
    }
    text
}

/// The character that stands for the byte `b` (always 0x80 or above: ASCII is valid UTF-8).
fn escaped(b: u8) -> char {
    char::from_u32(ESCAPE_BASE + u32::from(b)).expect("U+10FF80..U+10FFFF are characters")
}

/// The path the journal's `text` stands for.
pub fn to_path(text: &str) -> Cow<'_, Path> {
    if !has_escapes(text) {
        return Cow::Borrowed(Path::new(text));
    }
    let mut bytes = Vec::with_capacity(text.len());
    for c in text.chars() {
        match ESCAPED.contains(&c) {
            true => bytes.push((u32::from(c) - ESCAPE_BASE) as u8),
            false => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    Cow::Owned(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// The journal's `text` for a person to read: a byte that is not UTF-8 as `\xNN`, as `ls -b`
/// shows it, so a log line or `status` names the file one can find.
pub fn shown(text: &str) -> Cow<'_, str> {
    if !has_escapes(text) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(escaped_bytes(text, false))
}

/// `text`'s name with each byte that is not UTF-8 as `\xNN` and a backslash as `\\` (and, for
/// bash's `$'…'`, a quote as `\'`).
fn escaped_bytes(text: &str, quoted: bool) -> String {
    let path = to_path(text);
    let mut out = String::with_capacity(text.len() * 2);
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' if quoted => out.push_str("\\'"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// The journal's `text` as a shell argument to paste into a command we advise (`imgsyncd retry
/// …`): as it is for a plain name; in single quotes for one holding a space or a character the
/// shell reads (`a photo.jpg`, `$(x).jpg`), so the paste is one argument and runs nothing; in
/// bash's `$'…'` quotes for one with bytes that are not UTF-8, which turn `\xNN` back into the
/// byte.
pub fn for_shell(text: &str) -> Cow<'_, str> {
    let plain = |c: char| !c.is_ascii() || c.is_ascii_alphanumeric() || "/._-+,:=@%^".contains(c);
    match has_escapes(text) {
        true => Cow::Owned(format!("$'{}'", escaped_bytes(text, true))),
        false if text.chars().all(plain) => Cow::Borrowed(text),
        false => Cow::Owned(format!("'{}'", text.replace('\'', "'\\''"))),
    }
}

/// A path as a person reads it (see [`shown`]), for paths not yet in the journal.
pub fn shown_path(path: &Path) -> String {
    shown(&to_text(path)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::ffi::OsStr;

    fn path(bytes: &[u8]) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(bytes))
    }

    #[test]
    fn a_valid_name_is_its_own_text() {
        let p = Path::new("/srv/drop/产品 (1).jpg");
        assert!(matches!(
            to_text(p),
            Cow::Borrowed("/srv/drop/产品 (1).jpg")
        ));
        assert_eq!(to_path("/srv/drop/产品 (1).jpg"), p);
    }

    #[test]
    fn a_gbk_name_comes_back_byte_for_byte() {
        let gbk = path(b"/srv/drop/\xB2\xFA\xC6\xB7.jpg");
        let text = to_text(&gbk);
        assert!(text.starts_with("/srv/drop/") && text.ends_with(".jpg"));
        assert_eq!(to_path(&text), gbk);
        // C6 B7 happens to be valid UTF-8 (Ʒ): `ls` shows it so too.
        assert_eq!(shown(&text), "/srv/drop/\\xB2\\xFAƷ.jpg");
    }

    #[test]
    fn a_name_holding_the_escape_characters_is_escaped_too() {
        let odd = Path::new("/w/\u{10FFB2}.jpg");
        let text = to_text(odd);
        assert_ne!(text, "/w/\u{10FFB2}.jpg");
        assert_eq!(to_path(&text), odd);
        // and it differs from the raw byte it would otherwise be read back as
        assert_ne!(text, to_text(&path(b"/w/\xB2.jpg")));
    }

    #[test]
    fn an_odd_name_is_advised_in_bash_quotes_and_a_plain_one_as_it_is() {
        let odd = to_text(&path(b"/w/it's \\ \xB2.jpg")).into_owned();
        assert_eq!(shown(&odd), "/w/it's \\\\ \\xB2.jpg");
        assert_eq!(for_shell(&odd), "$'/w/it\\'s \\\\ \\xB2.jpg'");
        assert_eq!(for_shell("/w/产品-1.jpg"), "/w/产品-1.jpg");
        assert_eq!(for_shell("/w/a b.jpg"), "'/w/a b.jpg'");
        assert_eq!(for_shell("/w/$(touch x).jpg"), "'/w/$(touch x).jpg'");
        assert_eq!(for_shell("/w/it's.jpg"), "'/w/it'\\''s.jpg'");
    }

    proptest! {
        #[test]
        fn every_name_reads_back_exactly(bytes in proptest::collection::vec(1u8.., 0..40)) {
            let p = path(&bytes);
            let text = to_text(&p);
            prop_assert_eq!(to_path(&text), p.as_path());
        }

        #[test]
        fn a_folder_text_is_a_prefix_of_its_files(
            dir in proptest::collection::vec(1u8.., 1..20),
            name in proptest::collection::vec(1u8.., 1..20),
        ) {
            let dir: Vec<u8> = dir.into_iter().filter(|&b| b != b'/').collect();
            let name: Vec<u8> = name.into_iter().filter(|&b| b != b'/').collect();
            prop_assume!(!dir.is_empty() && !name.is_empty());
            let folder = path(&dir);
            let file = folder.join(OsStr::from_bytes(&name));
            let folder_text = format!("{}/", to_text(&folder));
            prop_assert!(to_text(&file).starts_with(&folder_text));
        }
    }
}
