//! Kingdee gateway signing (X-Api-Auth-Version 2.0), exactly as Kingdee's gateway client does it.
//! The sandbox verifies with the same functions; the unit tests pin them to Kingdee's own vectors.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Kingdee's path/key encoding: unreserved bytes kept, space to `+`, everything else `%XX`.
pub fn gw_encode(text: &str) -> String {
    encode(text, |b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
}

/// `java.net.URLEncoder.encode(v, "UTF-8")`: keeps `* - _ .`, space to `+`.
pub fn java_url_encode(text: &str) -> String {
    encode(text, |b| b.is_ascii_alphanumeric() || b"*-_.".contains(&b))
}

fn encode(text: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for &b in text.as_bytes() {
        match b {
            b' ' => out.push('+'),
            b if keep(b) => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The canonical query: values end up encoded twice, keys GW-encoded twice, sorted.
pub fn canonical_query(params: &[(&str, &str)]) -> String {
    let mut pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", gw_encode(k), java_url_encode(v)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            format!("{}={}", gw_encode(k), gw_encode(v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub fn string_to_sign(
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    nonce: &str,
    timestamp: &str,
) -> String {
    format!(
        "{}\n{}\n{}\nx-api-nonce:{}\nx-api-timestamp:{}\n",
        method.to_ascii_uppercase(),
        gw_encode(path),
        canonical_query(params),
        nonce,
        timestamp
    )
}

/// Base64 of the lowercase hex of HMAC-SHA256: 88 characters.
fn hmac_hex_base64(key: &str, message: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    let hex = format!("{:x}", mac.finalize().into_bytes());
    base64::engine::general_purpose::STANDARD.encode(hex)
}

/// The smallest and one past the largest nonce: ten digits, as Kingdee's SDK sends.
const NONCE_RANGE: std::ops::Range<u64> = 1_000_000_000..10_000_000_000;

/// `X-Api-Nonce` values that never repeat within a process: the gateway refuses a nonce it has
/// seen inside its clock window (4007), and random ten-digit nonces do collide: 10 000 calls in
/// one window share one about once in 200 drains (the drain bench hit it). A counter from a random
/// start steps through all nine billion before repeating; a restart starts somewhere else.
#[derive(Debug)]
pub struct Nonces(std::sync::atomic::AtomicU64);

impl Default for Nonces {
    fn default() -> Nonces {
        Nonces(std::sync::atomic::AtomicU64::new(fastrand::u64(
            NONCE_RANGE,
        )))
    }
}

impl Nonces {
    pub fn next(&self) -> u64 {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let span = NONCE_RANGE.end - NONCE_RANGE.start;
        NONCE_RANGE.start + (n - NONCE_RANGE.start) % span
    }
}

/// `X-Api-Signature` for a call.
pub fn signature(
    client_secret: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    nonce: &str,
    timestamp: &str,
) -> String {
    hmac_hex_base64(
        client_secret,
        &string_to_sign(method, path, params, nonce, timestamp),
    )
}

/// `app_signature` for the app-token request.
pub fn app_signature(app_key: &str, app_secret: &str) -> String {
    hmac_hex_base64(app_secret, app_key)
}

/// Constant-time comparison, for the sandbox's verification.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "f2adcfef73369bfc4e1384677d38a0ff";

    #[test]
    fn app_signature_matches_the_sdk_vector() {
        assert_eq!(
            app_signature("abc", "abc123"),
            "ZDljMTI3NGIyNTE1MTRkYzlkNjc1MDNhYjUzMzgzNWMyY2M4YTdjMzdmNmM3YTVlNDkxMTkzNjdiOTFjNzUyZQ=="
        );
    }

    #[test]
    fn token_request_signature_matches_the_sdk_vector() {
        let params = [
            ("app_key", "bVZgAZOv1"),
            (
                "app_signature",
                "MzZlYTk0ODk4MWZlNjdiODNmNWU4YzViNzYxNGM5MTFlOGJkN2NjMzk0MTJkZGNhZGM0NzZhN2YxZDJmOTlkZA==",
            ),
        ];
        let sig = signature(
            SECRET,
            "GET",
            "/jdyconnector/app_management/kingdee_auth_token",
            &params,
            "4427456950",
            "1670305063559",
        );
        assert_eq!(
            sig,
            "OTFiZTliNDFiMjNkYTI3YzVhNzg4MDI4ZGU3MWY1ZTA5ZTk1NjVlNGM1YTI1ZjIxY2Y5YTA3ZGY2OGI1MGQ1MQ=="
        );
        assert_eq!(sig.len(), 88);
    }

    #[test]
    fn post_and_delete_without_query_match_the_vectors() {
        let sign = |method| {
            signature(
                SECRET,
                method,
                "/jdy/v2/bd/material_picture",
                &[],
                "1234567890",
                "1700000000000",
            )
        };
        assert_eq!(
            sign("POST"),
            "YjY4M2Y2ODNhMWMxZDg2M2Q5MWE4OTM3NTdhYTdiYjZhM2I0NGQzNTA0NTZjMWU3ZGFmNDA2ZWNjYzRiNmY5ZA=="
        );
        assert_eq!(
            sign("DELETE"),
            "YzMwOGNlNzAwZjFhYzA3MDRhZjZjZTQzODg4YzFlN2Y4YzY2MGNhY2RmOGU5M2QyYzUxNTU4NTZhMzhkMDA5OQ=="
        );
    }

    #[test]
    fn query_values_are_encoded_twice() {
        let params = [("page", "1"), ("page_size", "100"), ("search", "A b/中")];
        assert_eq!(
            canonical_query(&params),
            "page=1&page_size=100&search=A%2Bb%252F%25E4%25B8%25AD"
        );
        assert_eq!(
            signature(
                SECRET,
                "GET",
                "/jdy/v2/bd/material",
                &params,
                "1234567890",
                "1700000000000"
            ),
            "MDRkZGQ3MWU3ZTQ0MzI5OWJlZTRmZTM4ZjFhZjFiYTdhMGQ5NDY4NmNlNzFkOGU5ZmRmODU4OTFiZDI1OWYxOA=="
        );
    }

    #[test]
    fn the_path_is_encoded_whole() {
        assert_eq!(
            gw_encode("/jdy/v2/bd/material_picture"),
            "%2Fjdy%2Fv2%2Fbd%2Fmaterial_picture"
        );
        let s = string_to_sign("post", "/a", &[], "1", "2");
        assert_eq!(s, "POST\n%2Fa\n\nx-api-nonce:1\nx-api-timestamp:2\n");
    }

    #[test]
    fn nonces_are_ten_digits_and_do_not_repeat_even_across_the_wrap() {
        let nonces = Nonces(std::sync::atomic::AtomicU64::new(NONCE_RANGE.end - 50_000));
        let seen: std::collections::HashSet<u64> = (0..100_000).map(|_| nonces.next()).collect();
        assert_eq!(seen.len(), 100_000);
        assert!(seen.iter().all(|n| NONCE_RANGE.contains(n)));
        assert!(seen.contains(&NONCE_RANGE.start) && seen.contains(&(NONCE_RANGE.end - 1)));
    }
}
