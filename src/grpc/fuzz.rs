//! Property tests over the edge: proto → domain conversion and validation
//! of events (`convert.rs`, `domain::event::validate`), metric queries
//! (`convert::metric_query`) and alert rules (`alerts::rule_spec`), fed with
//! hostile values: arbitrary Unicode, NUL, SQL metacharacters, enormous
//! strings, unknown enum numbers, extreme timestamps, NaN and infinities,
//! deeply nested `data`.
//!
//! Each property says: no panic; the same input always gets the same answer;
//! and whatever is accepted satisfies the documented limits.

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use prost_types::value::Kind;
use uuid::Uuid;

use super::proto;
use crate::domain::alert::{MAX_FOR_SECONDS, MAX_NAME_BYTES, MAX_WINDOW_SECONDS};
use crate::domain::event::{
    Clock, Detail, EventLimits, MAX_DATA_DEPTH, MAX_EVENT_TYPE_LEN, MAX_FUTURE, RawEvent, validate,
};
use crate::domain::metric::{MAX_BUCKETS, MAX_LIMIT};

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z][a-z0-9_]{0,12}",
        any::<String>(),
        Just("'; DROP TABLE events; --".to_owned()),
        Just("\" OR 1=1 --".to_owned()),
        Just("a\0b".to_owned()),
        Just("  padded  ".to_owned()),
        Just("é🙂\u{202e}".to_owned()),
        (1usize..6000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Mostly a plain value, sometimes hostile: enough valid inputs that the
/// "accepted ⇒ within the limits" half of each property is exercised.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-zA-Z0-9/_.-]{1,24}",
        2 => hostile_text(),
    ]
}

fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("click".to_owned()),
        Just("pageview".to_owned()),
        Just("purchase".to_owned()),
        "[a-z][a-z0-9_.:-]{0,70}",
        hostile_text(),
    ]
}

fn event_id() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => any::<u128>().prop_map(|u| Uuid::from_u128(u).to_string()),
        2 => any::<u128>().prop_map(|u| Uuid::from_u128(u).simple().to_string()),
        1 => Just(Uuid::nil().to_string()),
        1 => hostile_text(),
    ]
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    prop_oneof![Just(None), some_timestamp()]
}

fn some_timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let now = Utc::now().timestamp();
    let seconds = prop_oneof![
        1 => any::<i64>(),
        6 => (now - 86_400 * 400)..(now + 86_400 * 3),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => Just(-1i64),
    ];
    let nanos = prop_oneof![4 => 0i32..1_000_000_000, 1 => any::<i32>()];
    (seconds, nanos).prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos }))
}

/// A time within the last year, as most real requests carry.
fn plausible_timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let now = Utc::now().timestamp();
    ((now - 86_400 * 365)..now, 0i32..1_000_000_000)
        .prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos }))
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(f64::MAX),
    ]
}

fn value() -> impl Strategy<Value = prost_types::Value> {
    let leaf = prop_oneof![
        Just(Kind::NullValue(0)),
        any::<bool>().prop_map(Kind::BoolValue),
        number().prop_map(Kind::NumberValue),
        hostile_text().prop_map(Kind::StringValue),
    ];
    leaf.prop_map(|kind| prost_types::Value { kind: Some(kind) })
        .prop_recursive(24, 200, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|values| Kind::ListValue(prost_types::ListValue { values })),
                prop::collection::btree_map(hostile_text(), inner, 0..4)
                    .prop_map(|fields| Kind::StructValue(prost_types::Struct { fields })),
            ]
            .prop_map(|kind| prost_types::Value { kind: Some(kind) })
        })
}

fn data() -> impl Strategy<Value = Option<prost_types::Struct>> {
    prop_oneof![
        3 => Just(None),
        1 => prop::collection::btree_map(text(), value(), 0..5)
            .prop_map(|fields| Some(prost_types::Struct { fields })),
    ]
}

fn amount() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9]{1,16}(\\.[0-9]{0,6})?",
        1 => Just("-1".to_owned()),
        1 => Just("1e5".to_owned()),
        1 => Just("NaN".to_owned()),
        2 => Just("19.99".to_owned()),
        1 => hostile_text(),
    ]
}

fn pageview() -> impl Strategy<Value = proto::event::Detail> {
    text().prop_map(|page_url| proto::event::Detail::Pageview(proto::Pageview { page_url }))
}

fn purchase() -> impl Strategy<Value = proto::event::Detail> {
    (
        text(),
        prop_oneof![3 => 1i32..100, 1 => any::<i32>()],
        amount(),
    )
        .prop_map(|(product_id, quantity, amount)| {
            proto::event::Detail::Purchase(proto::Purchase {
                product_id,
                quantity,
                amount,
            })
        })
}

/// An event type with its detail: mostly a matching pair, sometimes any.
fn typed_detail() -> impl Strategy<Value = (String, Option<proto::event::Detail>)> {
    let any_detail = prop_oneof![
        Just(None),
        pageview().prop_map(Some),
        purchase().prop_map(Some)
    ];
    prop_oneof![
        2 => Just(("click".to_owned(), None)),
        2 => pageview().prop_map(|d| ("pageview".to_owned(), Some(d))),
        2 => purchase().prop_map(|d| ("purchase".to_owned(), Some(d))),
        1 => (event_type(), any_detail),
    ]
}

fn event() -> impl Strategy<Value = proto::Event> {
    (
        event_id(),
        typed_detail(),
        prop_oneof![3 => Just(None), 1 => timestamp()],
        text(),
        data(),
    )
        .prop_map(
            |(event_id, (event_type, detail), timestamp, user_id, data)| proto::Event {
                event_id,
                event_type,
                timestamp,
                user_id,
                data,
                detail,
            },
        )
}

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

const LIMITS: EventLimits = EventLimits {
    max_data_bytes: 8 * 1024,
    max_string_bytes: 2048,
};

fn check_event(
    event: proto::Event,
    clock: &Clock,
) -> Result<crate::domain::event::ValidEvent, String> {
    RawEvent::try_from(event)
        .and_then(|raw| validate(raw, clock, &LIMITS))
        .map_err(|rejection| format!("{}: {}", rejection.class, rejection.reason))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn events_are_accepted_only_within_the_rules(event in event(), sent_at in timestamp()) {
        let received_at: DateTime<Utc> = Utc::now();
        let clock = Clock {
            received_at,
            sent_at: sent_at.as_ref().and_then(super::convert::timestamp),
        };
        let first = check_event(event.clone(), &clock);
        let again = check_event(event.clone(), &clock);
        prop_assert_eq!(&first, &again);
        if let Ok(valid) = first {
            prop_assert!(!valid.event_id.is_nil());
            prop_assert!(!valid.event_type.is_empty() && valid.event_type.len() <= MAX_EVENT_TYPE_LEN);
            prop_assert!(valid.event_type.starts_with(|c: char| c.is_ascii_lowercase()));
            prop_assert!(valid.timestamp <= received_at + MAX_FUTURE);
            prop_assert!(valid.timestamp >= DateTime::UNIX_EPOCH);
            if let Some(user) = &valid.user_id {
                prop_assert!(!user.contains('\0'));
            }
            if let Some(data) = &valid.data {
                prop_assert!(data.is_object());
                prop_assert!(depth(data) <= MAX_DATA_DEPTH);
                prop_assert!(serde_json::to_string(data).unwrap().len() <= LIMITS.max_data_bytes);
            }
            match &valid.detail {
                Detail::None => prop_assert!(valid.event_type != "pageview" && valid.event_type != "purchase"),
                Detail::Pageview { page_url } => {
                    prop_assert_eq!(valid.event_type.as_str(), "pageview");
                    prop_assert!(page_url.len() <= LIMITS.max_string_bytes);
                }
                Detail::Purchase { quantity, amount, .. } => {
                    prop_assert_eq!(valid.event_type.as_str(), "purchase");
                    prop_assert!(*quantity >= 1);
                    prop_assert!(amount >= &bigdecimal::BigDecimal::from(0));
                }
            }
        }
    }

    #[test]
    fn metric_queries_are_bounded_or_refused(
        metric in prop_oneof![9 => 1i32..7, 1 => any::<i32>()],
        granularity in prop_oneof![9 => 1i32..5, 1 => any::<i32>()],
        group_by in prop_oneof![9 => 0i32..4, 1 => any::<i32>()],
        start in prop_oneof![8 => plausible_timestamp(), 1 => some_timestamp(), 1 => timestamp()],
        length in prop_oneof![1 => any::<i64>(), 1 => -3600i64..86_400 * 10, 8 => 60i64..86_400 * 3],
        use_length in prop_oneof![9 => Just(true), 1 => Just(false)],
        end in timestamp(),
        limit in prop_oneof![9 => 0u32..2000, 1 => any::<u32>()],
        event_types in prop_oneof![
            6 => Just(vec![]),
            3 => prop::collection::vec(event_type(), 0..3),
            1 => prop::collection::vec(event_type(), 0..70),
        ],
        page_url in prop_oneof![9 => Just(String::new()), 1 => hostile_text()],
        product_id in prop_oneof![9 => Just(String::new()), 1 => hostile_text()],
        user_id in prop_oneof![9 => Just(String::new()), 1 => hostile_text()],
    ) {
        // Ends are either arbitrary or a (possibly negative) length after start.
        let end = match (use_length, &start) {
            (true, Some(s)) => Some(prost_types::Timestamp { seconds: s.seconds.saturating_add(length), nanos: s.nanos }),
            _ => end,
        };
        let request = proto::GetMetricsRequest {
            metric,
            start,
            end,
            granularity,
            filter: Some(proto::Filter { event_types, page_url, product_id, user_id }),
            group_by,
            limit,
        };
        let first = super::convert::metric_query(request.clone(), 2048);
        let again = super::convert::metric_query(request, 2048);
        prop_assert_eq!(format!("{first:?}"), format!("{again:?}"));
        if let Ok(query) = first {
            prop_assert!(query.start < query.end);
            prop_assert!(query.limit <= MAX_LIMIT);
            prop_assert!(query.end - query.start > TimeDelta::zero());
            prop_assert!(query.bucket_starts().len() <= MAX_BUCKETS);
            for text in [&query.filter.page_url, &query.filter.product_id, &query.filter.user_id]
                .into_iter()
                .flatten()
            {
                prop_assert!(!text.contains('\0'));
            }
        }
    }

    #[test]
    fn alert_rules_are_accepted_only_within_the_limits(
        name in text(),
        metric in prop_oneof![9 => 1i32..7, 1 => any::<i32>()],
        comparison in prop_oneof![9 => 1i32..5, 1 => any::<i32>()],
        window_seconds in prop_oneof![9 => 0u32..100_000, 1 => any::<u32>(), 1 => Just(u32::MAX)],
        for_seconds in prop_oneof![9 => 0u32..100_000, 1 => any::<u32>()],
        threshold in prop_oneof![9 => -1e6f64..1e6, 1 => number()],
        enabled in any::<bool>(),
        event_types in prop_oneof![9 => Just(vec![]), 1 => prop::collection::vec(event_type(), 0..4)],
        page_url in prop_oneof![9 => Just(String::new()), 1 => hostile_text()],
        product_id in prop_oneof![9 => Just(String::new()), 1 => hostile_text()],
    ) {
        let rule = proto::AlertRule {
            id: String::new(),
            name,
            metric,
            filter: Some(proto::Filter { event_types, page_url, product_id, user_id: String::new() }),
            window_seconds,
            comparison,
            threshold,
            for_seconds,
            enabled,
        };
        let first = super::alerts::rule_spec(rule.clone(), 2048);
        let again = super::alerts::rule_spec(rule, 2048);
        prop_assert_eq!(format!("{first:?}"), format!("{again:?}"));
        if let Ok(spec) = first {
            prop_assert!(!spec.name.is_empty() && spec.name.len() <= MAX_NAME_BYTES);
            prop_assert_eq!(spec.name.trim(), spec.name.as_str());
            prop_assert!(spec.window_seconds >= 1 && spec.window_seconds <= MAX_WINDOW_SECONDS);
            prop_assert!(spec.for_seconds <= MAX_FOR_SECONDS);
            prop_assert!(spec.threshold.is_finite());
        }
    }
}
