//! What a Jiandaoyun upload token says about itself. The token is Qiniu's `AK:sign:policy`, where
//! `policy` is the URL-safe Base64 (padding optional) of a JSON put-policy: `deadline` (unix
//! seconds) tells when the token dies, `fsizeLimit` how many bytes a file may have. Nothing here
//! trusts the token to be well formed: what cannot be read falls back to the documented hour.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::Value;

/// A token and its transaction live one hour (the documented lifetime, used when a token's
/// policy cannot be read).
pub const DOCUMENTED_LIFETIME_MS: i64 = 3600 * 1000;
/// However long a token lives, it is not handed out in its last five minutes.
pub const MAX_MARGIN_MS: i64 = 5 * 60 * 1000;

/// URL-safe Base64 with or without padding, as Qiniu's SDKs write it.
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The parts of a put-policy the client needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutPolicy {
    /// When the token dies, unix seconds.
    pub deadline: Option<i64>,
    /// The largest file it takes, in bytes.
    pub fsize_limit: Option<u64>,
    /// The smallest.
    pub fsize_min: Option<u64>,
    /// The key the file will be stored under (with `forceSaveKey`).
    pub save_key: Option<String>,
}

/// The put-policy inside `token`, or `None` when the token is not `AK:sign:policy` with a JSON
/// object in Base64 as its third part.
pub fn decode(token: &str) -> Option<PutPolicy> {
    let mut parts = token.trim().split(':');
    let (_access_key, _sign, encoded) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || encoded.is_empty() {
        return None;
    }
    let json = URL_SAFE_ANY_PADDING.decode(encoded).ok()?;
    let policy: Value = serde_json::from_slice(&json).ok()?;
    let policy = policy.as_object()?;
    Some(PutPolicy {
        deadline: policy.get("deadline").and_then(Value::as_i64),
        fsize_limit: policy.get("fsizeLimit").and_then(Value::as_u64),
        fsize_min: policy.get("fsizeMin").and_then(Value::as_u64),
        save_key: policy
            .get("saveKey")
            .and_then(Value::as_str)
            .map(String::from),
    })
}

/// Encodes a put-policy the way Qiniu does (for the sandbox): URL-safe Base64 with padding.
pub fn encode(policy: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(policy.to_string())
}

/// When a token fetched at `fetched_at_ms` dies, and how big a file it takes: from its policy, or
/// the documented hour (and no size limit) when the policy cannot be read.
pub fn terms(token: &str, fetched_at_ms: i64) -> (i64, Option<u64>) {
    let policy = decode(token).unwrap_or_default();
    let deadline_ms = policy
        .deadline
        .map(|s| s.saturating_mul(1000))
        .unwrap_or(fetched_at_ms + DOCUMENTED_LIFETIME_MS);
    (deadline_ms, policy.fsize_limit)
}

/// How long before its death a token of `lifetime_ms` stops being handed out: a tenth of its
/// lifetime, at most [`MAX_MARGIN_MS`] (an hour's token: its last 5 minutes; a 60 s one: its last 6 s).
pub fn margin_ms(lifetime_ms: i64) -> i64 {
    (lifetime_ms.max(0) / 10).min(MAX_MARGIN_MS)
}

/// A fresh random UUID (version 4), as Jiandaoyun recommends for `transaction_id`.
pub fn uuid_v4() -> String {
    let mut bits = fastrand::u128(..);
    bits = (bits & !(0xF << 76)) | (0x4 << 76);
    bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two tokens of the sample answer in Jiandaoyun's file API page (jiandaoyun-file-api.md).
    const SAMPLE: &str = "bM7UwVPyBBdPaleBZt21SWKzMy2qPUpn-05jZlas:ELIqACNut-t52UMPD-DZNrX8hTU=:eyJmc2l6ZU1pbiI6MSwiZnNpemVMaW1pdCI6MjA5NzE1MjAwLCJjYWxsYmFja0JvZHlUeXBlIjoiYXBwbGljYXRpb24vanNvbiIsImNhbGxiYWNrQm9keSI6IntcImFwcElkXCI6XCI2MWFjNzcxNTE0MjU3NDM2ODhlZWMwYzRcIixcImVudHJ5SWRcIjpcIjYxYWM3NzNhMTQyNTc0MzY4OGVlYzBjN1wiLFwia2V5XCI6XCIkKGtleSlcIixcImhhc2hcIjpcIiQoZXRhZylcIixcIm5hbWVcIjpcIiQoZm5hbWUpXCIsXCJzaXplXCI6XCIkKGZzaXplKVwiLFwibWltZVwiOlwiJChtaW1lVHlwZSlcIixcImJ1Y2tldFwiOlwiamR5LWZpbGVcIixcInVwbG9hZGVyXCI6XCI2MTFhMmQzNjRmMzQ3MDAwMDY3NWM5ZGRcIixcInNlc3Npb25JZFwiOlwic3NkXCJ9IiwiY2FsbGJhY2tIb3N0IjoiNTA3NS0xMTQtMjI0LTE3LTIxNi5uZ3Jvay5pbyIsImNhbGxiYWNrVXJsIjoiaHR0cDovLzUwNzUtMTE0LTIyNC0xNy0yMTYubmdyb2suaW8vZmlsZS91cGxvYWQvYXBpX2NhbGxiYWNrIiwiZm9yY2VTYXZlS2V5Ijp0cnVlLCJzYXZlS2V5IjoiYTJjOTkwY2ItMTlhZS00NDgwLTkyYzYtZDI3N2I5ZGQ2MmFhIiwic2NvcGUiOiJkbi1qZHktdXBsb2FkIiwiZGVhZGxpbmUiOjE2Mzk0ODU2NjV9";
    /// The page's second token: its policy was mangled in the page (`eyJmc226…`): Base64 that
    /// decodes to bytes that are not JSON.
    const MANGLED: &str = "bM7UwVPyBBdPaleBZt21SWKzMylqPUpn-05jZlas:inKpUPPCKIWJ6CnZzHrRPnjXwio=:eyJmc226ZU1pbiI6MSwiZnNpemVMaW1pdCI6MjA5NzE1MjAwLCJjYWxsYmFja0JvZHlUeXBlIjoiYXBwbGljYXRpb24vanNvbiIsImNhbGxiYWNrQm9keSI6IntcImFwcElkXCI6XCI2MWFjNzcxNTE0MjU3NDM2ODhlZWMwYzRcIixcImVudHJ5SWRcIjpcIjYxYWM3NzNhMTQyNTc0MzY4OGVlYzBjN1wiLFwia2V5XCI6XCIkKGtleSlcIixcImhhc2hcIjpcIiQoZXRhZylcIixcIm5hbWVcIjpcIiQoZm5hbWUpXCIsXCJzaXplXCI6XCIkKGZzaXplKVwiLFwibWltZVwiOlwiJChtaW1lVHlwZSlcIixcImJ1Y2tldFwiOlwiamR5LWZpbGVcIixcInVwbG9hZGVyXCI6XCI2MTFhMmQzNjRmMzQ3MDAwMDY3NWM5ZGRcIixcInNlc3Npb25JZFwiOlwic3NkXCJ9IiwiY2FsbGJhY2tIb3N0IjoiNTA3NS0xMTQtMjI0LTE3LTIxNi5uZ3Jvay5pbyIsImNhbGxiYWNrVXJsIjoiaHR0cDovLzUwNzUtMTE0LTIyNC0xNy0yMTYubmdyb2suaW8vZmlsZS91cGxvYWQvYXBpX2NhbGxiYWNrIiwiZm9yY2VTYXZlS2V5Ijp0cnVlLCJzYXZlS2V5IjoiN2Y4Yzk3NDAtNmI2YS00OTQ0LWE0MzgtNjQ1Y2IzN2ViNmQ0Iiwic2NvcGUiOiJkbi1qZHktdXBsb2FkIiwiZGVhZGxpbmUiOjE2Mzk0ODU2NjV9";

    #[test]
    fn the_documented_sample_token_decodes() {
        assert_eq!(
            decode(SAMPLE),
            Some(PutPolicy {
                deadline: Some(1_639_485_665),
                fsize_limit: Some(209_715_200),
                fsize_min: Some(1),
                save_key: Some("a2c990cb-19ae-4480-92c6-d277b9dd62aa".into()),
            })
        );
        let fetched = 1_639_482_065_000;
        assert_eq!(
            terms(SAMPLE, fetched),
            (1_639_485_665_000, Some(209_715_200))
        );
    }

    #[test]
    fn an_unreadable_policy_falls_back_to_the_documented_hour() {
        assert_eq!(decode(MANGLED), None);
        let fetched = 1_700_000_000_000;
        assert_eq!(terms(MANGLED, fetched), (fetched + 3_600_000, None));
        for broken in [
            "",
            "no-colons",
            "ak:sign",
            "ak:sign:",
            "ak:sign:!!!notbase64",
            "ak:sign:W10", // `[]`: JSON, but not an object
            "a:b:c:d",
        ] {
            assert_eq!(decode(broken), None, "{broken}");
            assert_eq!(
                terms(broken, fetched),
                (fetched + 3_600_000, None),
                "{broken}"
            );
        }
        // A readable policy without a deadline still gets the hour, and keeps its size limit.
        let no_deadline = format!("ak:sig:{}", encode(&serde_json::json!({"fsizeLimit": 10})));
        assert_eq!(
            terms(&no_deadline, fetched),
            (fetched + 3_600_000, Some(10))
        );
    }

    #[test]
    fn padding_is_optional() {
        let policy = serde_json::json!({"deadline": 1_700_000_100, "fsizeLimit": 5});
        let padded = encode(&policy);
        assert!(padded.ends_with('='), "{padded}");
        let bare = padded.trim_end_matches('=');
        for encoded in [padded.as_str(), bare] {
            let token = format!("ak:sig=:{encoded}");
            assert_eq!(terms(&token, 0), (1_700_000_100_000, Some(5)));
        }
    }

    #[test]
    fn the_margin_scales_with_the_lifetime() {
        assert_eq!(margin_ms(3_600_000), 300_000, "an hour: the last 5 minutes");
        assert_eq!(
            margin_ms(1_800_000),
            180_000,
            "half an hour: the last 3 minutes"
        );
        assert_eq!(margin_ms(60_000), 6_000);
        assert_eq!(margin_ms(3_000), 300, "a short-lived token still works");
        assert_eq!(margin_ms(0), 0);
        assert_eq!(margin_ms(-5), 0);
    }

    #[test]
    fn transaction_ids_are_fresh_uuid_v4s() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert!(groups[2].starts_with('4'), "version 4: {a}");
        assert!("89ab".contains(&groups[3][..1]), "RFC 4122 variant: {a}");
        assert_ne!(uuid_v4(), a);
    }
}
