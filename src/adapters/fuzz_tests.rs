//! Property tests: no answer a vendor (or anything pretending to be one) sends makes an answer
//! reader panic: arbitrary bytes, and JSON shaped like the vendors' answers with every field of
//! the wrong type or at the edge of its range. Kingdee's token, upload and delete answers, Feishu's
//! token and upload answers, Jiandaoyun's upload-token batches (with the Qiniu put-policies inside
//! them), Qiniu's upload answers and `data/create`'s record answers; and the headers every call
//! reads (`Retry-After`, `x-ogw-ratelimit-reset`, `Date`). A reader that says `Done` always holds
//! the reference it read.

use std::time::Duration;

use base64::Engine;
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::http::{Received, retry_after};
use super::jiandaoyun::{self, Jiandaoyun, JiandaoyunConfig, Sent, policy};
use super::outcome::{Call, Outcome};
use super::{feishu, kingdee};
use crate::config::Secret;

/// Every field name the readers look for, and a few they do not.
const KEYS: &[&str] = &[
    "errcode",
    "description",
    "data",
    "app-token",
    "expires",
    "rows",
    "url",
    "code",
    "msg",
    "error",
    "log_id",
    "field_violations",
    "field",
    "tenant_access_token",
    "expire",
    "file_token",
    "key",
    "_id",
    "token_and_url_list",
    "token",
    "deadline",
    "fsizeLimit",
    "fsizeMin",
    "saveKey",
    "0",
    "",
    "√",
];

/// Numbers at the edges of every type a reader converts to.
fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(i64::MIN)),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(1.5e300)),
        Just(json!(-0.0)),
        Just(json!(1_030_002_006)),
        Just(json!(99_991_663)),
        Just(json!(7216)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
    ]
    .boxed()
}

fn string() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("http://127.0.0.1:1/x".to_string()),
        Just("t-g1234".to_string()),
        Just("图片不存在".to_string()),
        Just("not found".to_string()),
        "\\PC{0,40}",
        prop::sample::select(KEYS).prop_map(String::from),
    ]
    .boxed()
}

/// Any JSON, with object keys mostly the ones the readers look for.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        4 => prop::sample::select(KEYS).prop_map(String::from),
                        1 => "\\PC{0,8}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
    .boxed()
}

/// A Qiniu upload token, `AK:sign:policy`, whose policy is any JSON (mostly an object with the
/// policy's fields), or a token that is not one.
fn upload_token() -> BoxedStrategy<String> {
    let policy = prop_oneof![
        3 => (field(number()), field(number()), field(number()), field(text())).prop_map(
            |(deadline, limit, min, key)| object(vec![
                ("deadline", deadline),
                ("fsizeLimit", limit),
                ("fsizeMin", min),
                ("saveKey", key),
            ])
        ),
        1 => json_value(),
    ];
    prop_oneof![
        4 => (policy, any::<bool>()).prop_map(|(p, padded)| {
            let text = p.to_string();
            let encoded = if padded {
                base64::engine::general_purpose::URL_SAFE.encode(text)
            } else {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
            };
            format!("ak:sign=:{encoded}")
        }),
        1 => "\\PC{0,60}",
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
            format!("ak:s:{}", base64::engine::general_purpose::STANDARD.encode(b))
        }),
    ]
    .boxed()
}

/// Mostly what the reader expects there, sometimes anything; sometimes absent.
fn field(preferred: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    proptest::option::weighted(0.9, prop_oneof![3 => preferred, 1 => json_value()]).boxed()
}

fn text() -> BoxedStrategy<Value> {
    string().prop_map(Value::String).boxed()
}

fn success_code() -> BoxedStrategy<Value> {
    prop_oneof![3 => Just(json!(0)), 1 => number()].boxed()
}

/// An object of the fields present.
fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect(),
    )
}

/// Answers shaped like Kingdee's: `{errcode, description, data: {app-token, expires, rows}}`.
fn kingdee_answer() -> BoxedStrategy<Value> {
    let data = (field(text()), field(number()), field(text())).prop_map(|(token, expires, url)| {
        object(vec![
            ("app-token", token),
            ("expires", expires),
            ("rows", Some(json!([object(vec![("url", url)])]))),
        ])
    });
    (field(success_code()), field(text()), field(data))
        .prop_map(|(code, description, data)| {
            object(vec![
                ("errcode", code),
                ("description", description),
                ("data", data),
            ])
        })
        .boxed()
}

/// Answers shaped like Feishu's: `{code, msg, tenant_access_token, expire, data: {file_token},
/// error: {log_id, field_violations}}`.
fn feishu_answer() -> BoxedStrategy<Value> {
    let data = field(text()).prop_map(|token| object(vec![("file_token", token)]));
    let violation = (field(text()), field(text()))
        .prop_map(|(f, d)| object(vec![("field", f), ("description", d)]));
    let error = (
        field(text()),
        field(prop::collection::vec(violation, 0..3).prop_map(Value::Array)),
    )
        .prop_map(|(log_id, violations)| {
            object(vec![("log_id", log_id), ("field_violations", violations)])
        });
    (
        field(success_code()),
        field(text()),
        field(text()),
        field(number()),
        field(data),
        field(error),
    )
        .prop_map(|(code, msg, token, expire, data, error)| {
            object(vec![
                ("code", code),
                ("msg", msg),
                ("tenant_access_token", token),
                ("expire", expire),
                ("data", data),
                ("error", error),
            ])
        })
        .boxed()
}

/// Answers shaped like Jiandaoyun's and Qiniu's: `{code, msg}`, `{error}`, `{key}`,
/// `{data: {_id}}`, `{token_and_url_list: [{url, token}]}`.
fn jiandaoyun_answer() -> BoxedStrategy<Value> {
    let pair = (field(text()), field(upload_token().prop_map(Value::String)))
        .prop_map(|(url, token)| object(vec![("url", url), ("token", token)]));
    let list = prop::collection::vec(pair, 0..4).prop_map(Value::Array);
    let data = field(text()).prop_map(|id| object(vec![("_id", id)]));
    (
        proptest::option::weighted(0.3, success_code()),
        field(text()),
        proptest::option::weighted(0.2, json_value()),
        field(text()),
        field(data),
        field(list),
    )
        .prop_map(|(code, msg, error, key, data, list)| {
            object(vec![
                ("code", code),
                ("msg", msg),
                ("error", error),
                ("key", key),
                ("data", data),
                ("token_and_url_list", list),
            ])
        })
        .boxed()
}

/// A body: arbitrary bytes, any JSON, or JSON shaped like one of the vendors' answers.
fn body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..600),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        3 => kingdee_answer().prop_map(|v| v.to_string().into_bytes()),
        3 => feishu_answer().prop_map(|v| v.to_string().into_bytes()),
        3 => jiandaoyun_answer().prop_map(|v| v.to_string().into_bytes()),
    ]
    .boxed()
}

/// The headers the readers look at, with any value (or a real date far off).
fn headers() -> BoxedStrategy<Vec<(&'static str, Vec<u8>)>> {
    let name = prop::sample::select(&["date", "retry-after", "x-ogw-ratelimit-reset"][..]);
    let value = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        (-400_000_000i64..400_000_000).prop_map(|s| {
            let at = if s >= 0 {
                std::time::SystemTime::now() + Duration::from_secs(s as u64)
            } else {
                std::time::SystemTime::now() - Duration::from_secs((-s) as u64)
            };
            httpdate::fmt_http_date(at).into_bytes()
        }),
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
    ];
    prop::collection::vec((name, value), 0..3).boxed()
}

fn received(status: u16, headers: &[(&'static str, Vec<u8>)], body: &[u8]) -> Received {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            map.append(HeaderName::from_static(name), value);
        }
    }
    Received {
        status,
        wait: retry_after(&map),
        headers: map,
        body: body.to_vec(),
    }
}

/// The reference a successful answer names, where the reader found it.
fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

fn non_empty_str(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn adapter() -> Jiandaoyun {
    Jiandaoyun::new(
        "forms",
        "http://127.0.0.1:1",
        JiandaoyunConfig {
            api_key: Secret::new("fuzz-api-key"),
            app_id: "a".into(),
            entry_id: "e".into(),
            create_record: None,
            watch_roots: Vec::new(),
        },
        reqwest::Client::new(),
        None,
        None,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn kingdee_answers_never_panic(
        status in prop_oneof![4 => Just(200u16), 1 => Just(519u16), 1 => Just(429u16), 1 => 0u16..1000],
        headers in headers(),
        body in body(),
    ) {
        let json = json_of(&body);
        let token = kingdee::read(received(status, &headers, &body), "fetch the app-token", false, kingdee::token_of);
        if let Outcome::Done(token) = &token.outcome {
            let sent = non_empty_str(json.pointer("/data/app-token"));
            prop_assert_eq!(Some(token.value.expose()), sent);
        }
        let upload = kingdee::read(received(status, &headers, &body), "upload", true, kingdee::url_of);
        if let Outcome::Done(remote) = &upload.outcome {
            let sent = non_empty_str(json.pointer("/data/rows/0/url"));
            prop_assert_eq!(Some(remote.reference.as_str()), sent);
            prop_assert_eq!(status, 200);
        }
        let delete: Call<()> = kingdee::already_gone_is_done(kingdee::read(
            received(status, &headers, &body),
            "delete",
            false,
            |_| Ok(()),
        ));
        if delete.outcome == Outcome::Done(()) && status != 200 {
            prop_assert!(false, "a delete is done only when Kingdee answered 200: {delete:?}");
        }
    }

    #[test]
    fn feishu_answers_never_panic(
        status in prop_oneof![4 => Just(200u16), 1 => Just(400u16), 1 => Just(429u16), 1 => 0u16..1000],
        headers in headers(),
        body in body(),
    ) {
        let json = json_of(&body);
        let answer = feishu::Answer::of(received(status, &headers, &body));
        if let Outcome::Done(token) = answer.token() {
            prop_assert_eq!(
                Some(token.value.expose()),
                non_empty_str(json.get("tenant_access_token"))
            );
        }
        let uploaded = answer.uploaded();
        if let Outcome::Done(remote) = &uploaded {
            prop_assert_eq!(
                Some(remote.reference.as_str()),
                non_empty_str(json.pointer("/data/file_token"))
            );
        }
        let _ = answer.call(uploaded);
    }

    #[test]
    fn jiandaoyun_and_qiniu_answers_never_panic(
        status in prop_oneof![4 => Just(200u16), 1 => Just(400u16), 1 => Just(401u16), 1 => Just(614u16), 1 => 0u16..1000],
        headers in headers(),
        body in body(),
        sent_at in prop_oneof![Just(1_800_000_000_000i64), any::<i64>().prop_map(|t| t / 4)],
    ) {
        let json = json_of(&body);
        let forms = adapter();
        let answer = forms.read_batch(
            &jiandaoyun::Answer::of(received(status, &headers, &body)),
            "3f0b6c1e-0000-4000-8000-000000000000",
            sent_at,
        );
        if let Ok(batch) = answer {
            drop(batch);
        }
        let answer = jiandaoyun::Answer::of(received(status, &headers, &body));
        match jiandaoyun::sent(&answer) {
            Sent::Stored(key) => prop_assert_eq!(Some(key.as_str()), non_empty_str(json.get("key"))),
            Sent::Spent { .. } | Sent::Failed(_) => {}
        }
        if let Ok(id) = jiandaoyun::created(&answer) {
            prop_assert_eq!(Some(id.as_str()), non_empty_str(json.pointer("/data/_id")));
        }
    }

    #[test]
    fn the_put_policy_decoder_never_panics(token in upload_token(), fetched_at in any::<i64>()) {
        let decoded = policy::decode(&token);
        let (deadline, limit) = policy::terms(&token, fetched_at / 2);
        if let Some(policy) = decoded {
            prop_assert_eq!(limit, policy.fsize_limit);
            if let Some(seconds) = policy.deadline {
                prop_assert_eq!(deadline, seconds.saturating_mul(1000));
            }
        }
        let _ = policy::margin_ms(deadline.saturating_sub(fetched_at / 2));
    }

    #[test]
    fn the_put_policy_decoder_never_panics_on_any_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = policy::decode(&text);
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        let _ = policy::terms(&format!("ak:sign:{encoded}"), 0);
    }
}

/// What the properties above found, kept as plain cases.
#[test]
fn a_token_that_lives_for_ever_is_not_refreshed_in_the_past() {
    let now = 1_800_000_000_000;
    assert!(feishu::refresh_at(now, i64::MAX) > now);
    assert_eq!(feishu::refresh_at(now, 7200), now + 7_200_000 - 600_000);
}

#[test]
fn a_batch_whose_tokens_died_before_the_epoch_says_the_clock_is_off() {
    let policy = base64::engine::general_purpose::URL_SAFE.encode(
        json!({"deadline": i64::MIN, "fsizeLimit": 10})
            .to_string()
            .into_bytes(),
    );
    let body = json!({"token_and_url_list": [
        {"url": "http://127.0.0.1:1/up", "token": format!("ak:sign:{policy}")}
    ]})
    .to_string();
    let answer = jiandaoyun::Answer::of(received(200, &[], body.as_bytes()));
    match adapter().read_batch(&answer, "t", 1_800_000_000_000) {
        Err(Outcome::VendorDown { reason }) => {
            assert!(reason.contains("the clock is off"), "{reason}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}
