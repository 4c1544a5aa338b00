//! The half of every vendor call that is not the vendor's: the shared client with its timeouts,
//! reading an answer off the wire, and the waits vendors ask for.

use std::time::Duration;

use super::outcome::Call;

/// How long a connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole request may take, from connecting until the answer's body is read: a vendor
/// that stalls (no answer, or a body trickled) is given up on and the call retried.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(120);

/// The slowest uplink an upload is given time for, in bytes a second (256 kbit/s).
const SLOWEST_UPLINK: u64 = 32 * 1024;

/// How long an upload whose request body is `bytes` long may take: the total timeout, and on top
/// the time the body takes to send over the slowest uplink allowed for. With the total alone, a
/// 10 MB photo from an office's 2 Mbit/s line shared by four workers was cut off at 120 s every
/// time: it never synced, and five such files in a row paused the vendor as down.
pub fn upload_time(bytes: usize) -> Duration {
    match test_timeout() {
        Some(total) => total,
        None => TOTAL_TIMEOUT + body_time(bytes),
    }
}

/// How long a request body of `bytes` takes to send over the slowest uplink allowed for.
pub fn body_time(bytes: usize) -> Duration {
    Duration::from_secs(bytes as u64 / SLOWEST_UPLINK)
}

/// The HTTP client every adapter shares: rustls, bounded connect and total times.
pub fn http_client() -> reqwest::Client {
    let (connect, total) = match test_timeout() {
        Some(total) => (CONNECT_TIMEOUT.min(total), total),
        None => (CONNECT_TIMEOUT, TOTAL_TIMEOUT),
    };
    // No fallback to a default client: it would have no timeouts at all, and one stalled
    // vendor would hold a worker for good.
    reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(total)
        .user_agent(concat!("imgsyncd/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client (rustls, no system configuration) builds")
}

/// The test hook `IMGSYNCD_TEST_HTTP_TIMEOUT=3s`: the total timeout of every vendor call (and the
/// connect timeout, if shorter), so the end-to-end tests can meet a stalled vendor without
/// waiting two minutes. Read only by debug builds (the tests'); a release build ignores it and
/// keeps [`TOTAL_TIMEOUT`].
fn test_timeout() -> Option<Duration> {
    static READ: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *READ.get_or_init(|| {
        if !cfg!(debug_assertions) {
            return None;
        }
        let value = std::env::var("IMGSYNCD_TEST_HTTP_TIMEOUT").ok()?;
        let timeout = humantime::parse_duration(value.trim()).ok()?;
        tracing::warn!(
            "test hook IMGSYNCD_TEST_HTTP_TIMEOUT: vendor calls time out after {}",
            humantime::format_duration(timeout)
        );
        Some(timeout)
    })
}

/// An answer as it came off the wire, before a vendor reads it. Its `Debug` leaves the body out:
/// a token answer's body is a live token.
pub struct Received {
    pub status: u16,
    /// How long the vendor asked us to wait (`Retry-After`, `x-ogw-ratelimit-reset`).
    pub wait: Option<Duration>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("status", &self.status)
            .field("wait", &self.wait)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Reads a whole answer; a request that got none (connect, timeout, reset) is a transient failure.
pub async fn receive<T>(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<Received, Call<T>> {
    let response = response.map_err(|e| Call::network(&e))?;
    let status = response.status().as_u16();
    let wait = retry_after(response.headers());
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|e| Call::network(&e))?;
    Ok(Received {
        status,
        wait,
        headers,
        body: body.to_vec(),
    })
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

/// The head of an answer's `body` as text for a log line or a file's error: at most `chars`
/// characters, with the value of every field named like a token or a secret cut out (an answer
/// the adapter could not read, a token answer of an unexpected shape, may carry a live token).
pub fn snippet(body: &[u8], chars: usize) -> String {
    let head = &body[..body.len().min(chars * 4)];
    without_secrets(&String::from_utf8_lossy(head))
        .chars()
        .take(chars)
        .collect()
}

/// A vendor's own message (Kingdee's `description`, Feishu's `msg`, Jiandaoyun's `msg`), cut
/// of any value named like a token or a secret as [`snippet`] does: a gateway's "app-token:
/// <token> expired" would otherwise go into the journal and the log.
pub fn vendor_text(text: &str) -> String {
    without_secrets(text)
}

/// What a key names when its value must not be shown: tokens (`tenant_access_token`, `app-token`,
/// Qiniu's `token`), and secrets, passwords, signatures and authorization headers (a proxy or a
/// mock at `base_url` may echo the request it was sent: `app_secret`, Kingdee's `app_signature`,
/// `Authorization: Bearer <api_key>`).
const SECRET_KEY_WORDS: [&str; 5] = ["token", "secret", "password", "signature", "authorization"];

/// `text` with the value of each key holding one of [`SECRET_KEY_WORDS`] (any case) replaced by
/// "…"; a value cut short by the snippet is cut to the end. The shapes an echo of our request
/// takes: JSON (`"key": "value"`, `"key": ["value"]`, and JSON quoted inside a string,
/// `\"key\":\"value\"`), a query string (`key=value&…`) and a header (`key: value` to the end
/// of its line).
fn without_secrets(text: &str) -> String {
    // ASCII lowercasing keeps every byte where it was.
    let (lower, bytes) = (text.to_ascii_lowercase(), text.as_bytes());
    let (mut out, mut copied, mut from) = (String::with_capacity(text.len()), 0, 0);
    let next_word = |from: usize| {
        SECRET_KEY_WORDS
            .iter()
            .filter_map(|word| Some((lower[from..].find(word)?, word.len())))
            .min()
    };
    while let Some((found, length)) = next_word(from) {
        let key_end = skip(bytes, from + found + length, |b| {
            b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
        });
        from = key_end;
        // A file_token names what the vendor stored, for a person to find it: no secret.
        if lower[..key_end].ends_with("file_token") {
            continue;
        }
        let Some(value) = secret_value(bytes, key_end) else {
            continue;
        };
        out.push_str(&text[copied..value.start]);
        out.push('…');
        (copied, from) = (value.end, value.end);
    }
    out.push_str(&text[copied..]);
    out
}

fn skip(bytes: &[u8], mut i: usize, what: impl Fn(u8) -> bool) -> usize {
    while bytes.get(i).copied().is_some_and(&what) {
        i += 1;
    }
    i
}

/// Where the value of the key ending at `key_end` lies, if a value follows it.
fn secret_value(bytes: &[u8], key_end: usize) -> Option<std::ops::Range<usize>> {
    let at = |i: usize| bytes.get(i).copied();
    // The key's closing quote, escaped when the JSON is itself inside a string.
    let (quoted_key, escaped_key, mut i) = match (at(key_end), at(key_end + 1)) {
        (Some(b'"'), _) => (true, false, key_end + 1),
        (Some(b'\\'), Some(b'"')) => (true, true, key_end + 2),
        _ => (false, false, key_end),
    };
    i = skip(bytes, i, |b| b == b' ' || b == b'\t');
    let separator = at(i)?;
    let query = separator == b'=';
    if separator != b':' && !query {
        return None;
    }
    i = skip(bytes, i + 1, |b| b == b' ' || b == b'\t');
    if quoted_key && at(i) == Some(b'[') {
        // Every value of the list, up to its `]`.
        let start = skip(bytes, i + 1, |b| b.is_ascii_whitespace());
        let mut end = start;
        while end < bytes.len() && bytes[end] != b']' {
            if bytes[end] == b'"' && !escaped_key {
                end += 1;
                while end < bytes.len() && bytes[end] != b'"' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
            }
            end += 1;
        }
        return (end > start).then(|| start..end.min(bytes.len()));
    }
    let (start, escaped) = match (at(i), at(i + 1)) {
        (Some(b'"'), _) => (i + 1, false),
        (Some(b'\\'), Some(b'"')) => (i + 2, true),
        // A JSON key's value that is not a string (a number, `null`, an object) is no secret.
        _ if quoted_key => return None,
        _ => (i, false),
    };
    let mut end = start;
    if escaped {
        // JSON inside a string: the value ends at the next escaped quote.
        while end < bytes.len() && !(bytes[end] == b'\\' && at(end + 1) == Some(b'"')) {
            end += 1;
        }
    } else if start > i {
        // Up to the closing quote; an escaped one is part of the value.
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
    } else {
        // A query's value ends at the next parameter or blank; a header's at its line's end, or
        // where a message goes on to something else (`token: …; image_type: invalid`). Not at a
        // comma: `Authorization: Bearer ab,cd` would show `cd`.
        let ends = |b: u8| {
            matches!(b, b'\r' | b'\n' | b'"' | b'<' | b'&' | b';' | b')')
                || (query && b.is_ascii_whitespace())
        };
        while end < bytes.len() && !ends(bytes[end]) {
            end += 1;
        }
    }
    Some(start..end.min(bytes.len()))
}

#[cfg(test)]
mod upload_time_tests {
    use super::*;

    #[test]
    fn a_big_upload_is_given_the_time_its_body_takes_on_a_slow_line() {
        assert_eq!(upload_time(0), TOTAL_TIMEOUT);
        // 10 MB at 256 kbit/s: 320 s to send, past the 120 s every call gets.
        assert_eq!(
            upload_time(10 * 1024 * 1024),
            TOTAL_TIMEOUT + Duration::from_secs(320)
        );
        assert!(upload_time(50 * 1024 * 1024) > upload_time(10 * 1024 * 1024));
    }
}

#[cfg(test)]
mod snippet_tests {
    use super::snippet;

    #[test]
    fn a_snippet_shows_no_token() {
        let cases = [
            (
                r#"{"code":0,"tenant_access_token":"t-g1044ab","expire":"7200"}"#,
                r#"{"code":0,"tenant_access_token":"…","expire":"7200"}"#,
            ),
            (
                r#"{"data": {"app-token" : "abc\"def", "x": 1}}"#,
                r#"{"data": {"app-token" : "…", "x": 1}}"#,
            ),
            (
                r#"[{"url":"u","Token":"AK:sig:pol"},{"token":"AK:sig2"#,
                r#"[{"url":"u","Token":"…"},{"token":"…"#,
            ),
            (
                r#"{"token_type":1,"tokens":[]}"#,
                r#"{"token_type":1,"tokens":[]}"#,
            ),
            (
                r#"{"data":{"file_token":"boxcnAbc"},"access_token":"x"}"#,
                r#"{"data":{"file_token":"boxcnAbc"},"access_token":"…"}"#,
            ),
            ("<html>token expired</html>", "<html>token expired</html>"),
            // A proxy echoing the token request it was sent.
            (
                r#"echo: {"app_id":"cli_a1","app_secret":"s3cr3t","client_secret" : "x","password":"p"}"#,
                r#"echo: {"app_id":"cli_a1","app_secret":"…","client_secret" : "…","password":"…"}"#,
            ),
            (
                r#"{"headers":{"Authorization":"Bearer key-1"},"query":{"app_signature":"c2ln"}}"#,
                r#"{"headers":{"Authorization":"…"},"query":{"app_signature":"…"}}"#,
            ),
            // Echoes as a Go server, httpbin, a query string and raw headers give them.
            (
                r#"{"App-Token":["tok-1"],"Authorization":[ "Bearer key-1" ],"X":["y"]}"#,
                r#"{"App-Token":[…],"Authorization":[ …],"X":["y"]}"#,
            ),
            (
                r#"{"tokens":["t1","t]2"],"n":1}"#,
                r#"{"tokens":[…],"n":1}"#,
            ),
            (
                r#"{"d":"{\"tokens\":[\"t1\",\"t2\"],\"n\":1}"}"#,
                r#"{"d":"{\"tokens\":[…],\"n\":1}"}"#,
            ),
            (
                "params error (app_secret: abc; image_type: invalid)",
                "params error (app_secret: …; image_type: invalid)",
            ),
            (
                r#"{"data":"{\"app_secret\":\"s3cr3t\",\"app_id\":\"a\"}"}"#,
                r#"{"data":"{\"app_secret\":\"…\",\"app_id\":\"a\"}"}"#,
            ),
            (
                "GET /token?app_key=k&app_signature=c2ln+x&x=1 not found",
                "GET /token?app_key=k&app_signature=…&x=1 not found",
            ),
            (
                "Authorization: Bearer key-1\r\napp-token: tok-1\r\nHost: h",
                "Authorization: …\r\napp-token: …\r\nHost: h",
            ),
            (
                "<p>token expired, try again</p>",
                "<p>token expired, try again</p>",
            ),
            (
                "Authorization: Bearer ab,cd\r\nX: y",
                "Authorization: …\r\nX: y",
            ),
            (
                r#"{"token_count": 3, "tokens": null}"#,
                r#"{"token_count": 3, "tokens": null}"#,
            ),
        ];
        for (body, shown) in cases {
            assert_eq!(snippet(body.as_bytes(), 300), shown);
        }
        assert_eq!(
            snippet("是的token".repeat(200).as_bytes(), 10)
                .chars()
                .count(),
            10
        );
    }
}
