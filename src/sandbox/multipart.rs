//! A strict reader of `multipart/form-data` bodies (RFC 7578), written for the sandbox: it keeps
//! the parts in the order they came and tells a file part (with a `filename`) from a plain field,
//! which is what an emulator must check and what general-purpose extractors hide.

/// One part of a form, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormPart {
    pub name: String,
    /// `None` for a plain field; `Some` (possibly empty) when the part carried a `filename`.
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

/// The boundary a `Content-Type: multipart/form-data; boundary=…` header names.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parameters(params)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v)
        .filter(|b| !b.is_empty() && b.len() <= 70)
}

/// The parts of `body`, in order. Anything malformed is an error saying what.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<FormPart>, String> {
    let delimiter = format!("--{boundary}").into_bytes();
    let mut at = find(body, &delimiter, 0).ok_or("the body has no boundary line")?;
    let mut parts = Vec::new();
    loop {
        at += delimiter.len();
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        if !body[at..].starts_with(b"\r\n") {
            return Err("a boundary line is not followed by CRLF".into());
        }
        at += 2;
        let headers_end =
            find(body, b"\r\n\r\n", at).ok_or("a part's headers do not end with an empty line")?;
        let headers = std::str::from_utf8(&body[at..headers_end])
            .map_err(|_| "a part's headers are not UTF-8")?;
        let data_start = headers_end + 4;
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(&delimiter);
        let data_end = find(body, &closing, data_start)
            .ok_or("the body ends inside a part (no closing boundary)")?;
        parts.push(part(headers, body[data_start..data_end].to_vec())?);
        at = data_end + 2;
    }
}

fn part(headers: &str, data: Vec<u8>) -> Result<FormPart, String> {
    let mut disposition = None;
    let mut content_type = None;
    for line in headers.split("\r\n") {
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("a part header is not `Name: value`: {line:?}"))?;
        if key.trim().eq_ignore_ascii_case("content-disposition") {
            disposition = Some(value.trim().to_string());
        } else if key.trim().eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_string());
        }
    }
    let disposition = disposition.ok_or("a part has no Content-Disposition")?;
    let (kind, params) = disposition.split_once(';').unwrap_or((&disposition, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(format!("a part's disposition is {kind:?}, not form-data"));
    }
    let params = parameters(params);
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    let name = get("name")
        .or_else(|| get("name*").map(|v| extended(&v)))
        .ok_or("a part has no name")?;
    let filename = get("filename").or_else(|| get("filename*").map(|v| extended(&v)));
    Ok(FormPart {
        name,
        filename,
        content_type,
        data,
    })
}

/// `; key=value; key="quoted \"value\""` (an empty parameter, as in `name="name";`, is allowed).
fn parameters(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ';' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_string();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ';') {
                value.push(c);
            }
            value = value.trim().to_string();
        }
        out.push((key, value));
    }
}

/// An RFC 5987 value (`utf-8''%E4%BA%A7.png`), decoded.
fn extended(value: &str) -> String {
    let encoded = value.splitn(3, '\'').nth(2).unwrap_or(value);
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_keep_their_order_and_file_parts_their_filename() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"name\";\r\n\r\n\xe7\xa4\xba\xe4\xbe\x8b.png\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a \\\"b\\\".png\"\r\nContent-Type: application/octet-stream\r\n\r\n\x89PNG\r\n--X\r\n--XyZ--\r\n";
        let parts = parse(body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "name");
        assert_eq!(parts[0].filename, None);
        assert_eq!(parts[0].data, "示例.png".as_bytes());
        assert_eq!(parts[1].name, "file");
        assert_eq!(parts[1].filename.as_deref(), Some("a \"b\".png"));
        assert_eq!(
            parts[1].content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(
            parts[1].data, b"\x89PNG\r\n--X",
            "a near-boundary inside data is data"
        );
    }

    #[test]
    fn boundaries_and_broken_bodies() {
        assert_eq!(
            boundary("multipart/form-data; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("application/json"), None);
        assert!(
            parse(
                b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nno end",
                "b"
            )
            .is_err()
        );
        assert!(parse(b"nothing here", "b").is_err());
        let encoded = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename*=utf-8''%E5%9B%BE.png\r\n\r\nx\r\n--b--";
        assert_eq!(
            parse(encoded, "b").unwrap()[0].filename.as_deref(),
            Some("图.png")
        );
    }
}
