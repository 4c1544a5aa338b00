//! The name a vendor is given for a file. Linux names are bytes; a vendor takes text, and shows it
//! (a Jiandaoyun attachment, a Feishu file, a form field filled from `{filename}`).

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// `name` as text for the vendor. A name that is not UTF-8 is most often GBK, from a zip made
/// on a Chinese Windows desktop: when its bytes are valid GB18030 (GBK's superset), the vendor
/// gets the characters they spell (产品.jpg, not ��Ʒ.jpg); otherwise each byte that is not UTF-8
/// becomes `�`. A guess: Big5 or Shift-JIS names are mostly valid GB18030 too, and reach the
/// vendor as other Chinese characters. The file itself is found by its exact bytes either way.
pub fn for_vendor(name: &OsStr) -> Cow<'_, str> {
    let bytes = name.as_bytes();
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(text);
    }
    match encoding_rs::GB18030.decode_without_bom_handling_and_without_replacement(bytes) {
        Some(text) => Cow::Owned(text.into_owned()),
        None => name.to_string_lossy(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gbk_name_is_given_as_the_characters_it_spells() {
        assert_eq!(
            for_vendor(OsStr::from_bytes(b"\xb2\xfa\xc6\xb7.jpg")),
            "产品.jpg"
        );
    }

    #[test]
    fn a_utf8_name_is_given_as_it_is_and_other_bytes_as_replacement_characters() {
        assert_eq!(for_vendor(OsStr::new("商品 ü.png")), "商品 ü.png");
        // A lone Latin-1 é is no GB18030: its byte becomes �.
        assert_eq!(
            for_vendor(OsStr::from_bytes(b"caf\xe9.png")),
            "caf\u{fffd}.png"
        );
    }
}
