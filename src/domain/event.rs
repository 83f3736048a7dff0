//! An event as a client sends it ([`RawEvent`]) and as Pulse stores it
//! ([`ValidEvent`]), with every rule of the ingest contract between the two.
//!
//! Invariants of a [`ValidEvent`]:
//! * `event_id` is a non-nil UUID;
//! * `event_type` matches `[a-z][a-z0-9_.:-]{0,63}`;
//! * `timestamp` is skew-corrected and at most [`MAX_FUTURE`] ahead of the
//!   server's clock, and not before 1970;
//! * `detail` matches the type: `pageview` has a page URL, `purchase` has a
//!   product, a quantity ≥ 1 and an exact amount, every other type has none;
//! * every string is within its limit and holds no NUL character (PostgreSQL
//!   text cannot store one); `data` is a JSON object within its size limit.

use bigdecimal::BigDecimal;
use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

/// How far ahead of the server's clock an event may be.
pub const MAX_FUTURE: TimeDelta = TimeDelta::days(1);
/// Longest event type name.
pub const MAX_EVENT_TYPE_LEN: usize = 64;
/// Longest identifier: user ids, product ids (bytes).
pub const MAX_ID_LEN: usize = 256;
/// Deepest nesting of `data`, counted in containers: the top-level object is
/// level 1, each object or array inside it one level more, and a scalar
/// leaf adds none (16 nested objects with a number inside are accepted, 17
/// nested objects are not).
pub const MAX_DATA_DEPTH: usize = 16;
/// Digits of an amount before and after the decimal point (NUMERIC(18, 4)).
pub const AMOUNT_INTEGER_DIGITS: usize = 14;
pub const AMOUNT_FRACTION_DIGITS: usize = 4;

/// The limits that configuration may change.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// Longest `data`, in bytes of its compact JSON form.
    pub max_data_bytes: usize,
    /// Longest page URL (bytes).
    pub max_string_bytes: usize,
}

/// An event as received, before any rule is applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawEvent {
    pub event_id: String,
    pub event_type: String,
    /// `None` when the client sent no timestamp ("now").
    pub timestamp: Option<DateTime<Utc>>,
    pub user_id: String,
    /// `None` when the client sent no data.
    pub data: Option<serde_json::Value>,
    pub detail: RawDetail,
}

/// The `detail` oneof as received.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum RawDetail {
    #[default]
    None,
    Pageview {
        page_url: String,
    },
    Purchase {
        product_id: String,
        quantity: i32,
        amount: String,
    },
}

/// An event that passed every rule and may be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub timestamp: DateTime<Utc>,
    /// The client's user id; `None` for an anonymous event.
    pub user_id: Option<String>,
    pub data: Option<serde_json::Value>,
    pub detail: Detail,
    /// About how many bytes the event is (its `data` as JSON and its
    /// strings): the writer bounds a batch by it.
    pub size: usize,
}

/// What a pageview or purchase adds to its event.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    None,
    Pageview {
        page_url: String,
    },
    Purchase {
        product_id: String,
        quantity: i32,
        amount: BigDecimal,
    },
}

/// Why an event was rejected: a class for metrics, and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A short stable label (`event_id`, `event_type`, `timestamp`, `data`,
    /// `detail`, `amount`, `quantity`, `too_long`, ...), used in `/metrics`.
    pub class: &'static str,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl Rejection {
    pub fn new(class: &'static str, reason: impl Into<String>) -> Self {
        Self {
            class,
            reason: reason.into(),
        }
    }
}

/// The server's clocks for one message.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// When the message was received, by the server's clock.
    pub received_at: DateTime<Utc>,
    /// When the client says it sent the message, by its own clock.
    pub sent_at: Option<DateTime<Utc>>,
}

impl Clock {
    /// The stored time of an event: "now" when it has none; corrected for
    /// client clock skew when `sent_at` is known
    /// (`stored = received_at + (timestamp − sent_at)`).
    pub fn correct(&self, timestamp: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        match (timestamp, self.sent_at) {
            (None, _) => Some(self.received_at),
            (Some(ts), None) => Some(ts),
            (Some(ts), Some(sent)) => self
                .received_at
                .checked_add_signed(ts.signed_duration_since(sent)),
        }
    }
}

/// Applies every rule to one event.
pub fn validate(
    raw: RawEvent,
    clock: &Clock,
    limits: &EventLimits,
) -> Result<ValidEvent, Rejection> {
    let event_id = parse_event_id(&raw.event_id)?;
    let event_type = parse_event_type(&raw.event_type)?;
    let timestamp = check_timestamp(raw.timestamp, clock)?;
    let user_id = check_user_id(raw.user_id)?;
    let (data, data_size) = match raw.data {
        None => (None, 0),
        Some(value) => {
            let (value, size) = check_data(value, limits.max_data_bytes)?;
            (Some(value), size)
        }
    };
    let detail = check_detail(&event_type, raw.detail, limits)?;

    let size = data_size
        + event_type.len()
        + user_id.as_ref().map_or(0, String::len)
        + match &detail {
            Detail::None => 0,
            Detail::Pageview { page_url } => page_url.len(),
            Detail::Purchase { product_id, .. } => product_id.len() + 16,
        }
        + 64;
    Ok(ValidEvent {
        event_id,
        event_type,
        timestamp,
        user_id,
        data,
        detail,
        size,
    })
}

/// The stored time of an event (see [`Clock::correct`]): in range, at most
/// [`MAX_FUTURE`] ahead of the server's clock, and not before 1970.
fn check_timestamp(
    timestamp: Option<DateTime<Utc>>,
    clock: &Clock,
) -> Result<DateTime<Utc>, Rejection> {
    let timestamp = clock
        .correct(timestamp)
        .ok_or_else(|| Rejection::new("timestamp", "timestamp is out of range"))?;
    if timestamp > clock.received_at + MAX_FUTURE {
        return Err(Rejection::new(
            "timestamp",
            format!(
                "timestamp {} is more than a day in the future (server time {})",
                timestamp.to_rfc3339(),
                clock.received_at.to_rfc3339()
            ),
        ));
    }
    if timestamp < DateTime::UNIX_EPOCH {
        return Err(Rejection::new(
            "timestamp",
            "timestamp is before 1970-01-01",
        ));
    }
    Ok(timestamp)
}

/// The user id, `None` when empty (an anonymous event).
fn check_user_id(user_id: String) -> Result<Option<String>, Rejection> {
    if user_id.is_empty() {
        return Ok(None);
    }
    check_string("user_id", &user_id, MAX_ID_LEN)?;
    Ok(Some(user_id))
}

/// The detail, which must match the event type: `pageview` and `purchase`
/// require theirs, every other type carries none.
fn check_detail(
    event_type: &str,
    detail: RawDetail,
    limits: &EventLimits,
) -> Result<Detail, Rejection> {
    match (event_type, detail) {
        ("pageview", RawDetail::Pageview { page_url }) => check_pageview(page_url, limits),
        ("pageview", _) => Err(Rejection::new(
            "detail",
            "event_type `pageview` requires detail.pageview with a page_url",
        )),
        (
            "purchase",
            RawDetail::Purchase {
                product_id,
                quantity,
                amount,
            },
        ) => check_purchase(product_id, quantity, &amount),
        ("purchase", _) => Err(Rejection::new(
            "detail",
            "event_type `purchase` requires detail.purchase with product_id, quantity and amount",
        )),
        (_, RawDetail::None) => Ok(Detail::None),
        (other, RawDetail::Pageview { .. }) => Err(Rejection::new(
            "detail",
            format!(
                "event_type `{other}` carries detail.pageview, which only `pageview` events may"
            ),
        )),
        (other, RawDetail::Purchase { .. }) => Err(Rejection::new(
            "detail",
            format!(
                "event_type `{other}` carries detail.purchase, which only `purchase` events may"
            ),
        )),
    }
}

/// A pageview's detail: a page URL, not empty and within its limit.
fn check_pageview(page_url: String, limits: &EventLimits) -> Result<Detail, Rejection> {
    if page_url.is_empty() {
        return Err(Rejection::new("detail", "pageview.page_url is empty"));
    }
    check_string("page_url", &page_url, limits.max_string_bytes)?;
    Ok(Detail::Pageview { page_url })
}

/// A purchase's detail: a product id, a quantity of at least 1 and an exact
/// amount.
fn check_purchase(product_id: String, quantity: i32, amount: &str) -> Result<Detail, Rejection> {
    if product_id.is_empty() {
        return Err(Rejection::new("detail", "purchase.product_id is empty"));
    }
    check_string("product_id", &product_id, MAX_ID_LEN)?;
    if quantity < 1 {
        return Err(Rejection::new(
            "quantity",
            format!("purchase.quantity must be at least 1, got {quantity}"),
        ));
    }
    let amount = parse_amount(amount)?;
    Ok(Detail::Purchase {
        product_id,
        quantity,
        amount,
    })
}

fn parse_event_id(text: &str) -> Result<Uuid, Rejection> {
    if text.is_empty() {
        return Err(Rejection::new(
            "event_id",
            "event_id is empty: send a UUID chosen by the client",
        ));
    }
    let id = Uuid::try_parse(text).map_err(|_| {
        Rejection::new(
            "event_id",
            format!("event_id `{}` is not a UUID", truncate(text, 64)),
        )
    })?;
    if id.is_nil() {
        return Err(Rejection::new("event_id", "event_id is the nil UUID"));
    }
    Ok(id)
}

/// Event type names: lowercase, starting with a letter.
pub fn parse_event_type(text: &str) -> Result<String, Rejection> {
    if text.is_empty() {
        return Err(Rejection::new("event_type", "event_type is empty"));
    }
    if text.len() > MAX_EVENT_TYPE_LEN {
        return Err(Rejection::new(
            "event_type",
            format!(
                "event_type is {} bytes long; the limit is {MAX_EVENT_TYPE_LEN}",
                text.len()
            ),
        ));
    }
    let mut chars = text.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.:-".contains(c));
    if !first_ok || !rest_ok {
        return Err(Rejection::new(
            "event_type",
            format!(
                "event_type `{}` must start with a lowercase letter and hold only a-z, 0-9, `_`, `.`, `:`, `-`",
                truncate(text, 64)
            ),
        ));
    }
    Ok(text.to_owned())
}

fn check_string(field: &'static str, value: &str, limit: usize) -> Result<(), Rejection> {
    if value.len() > limit {
        return Err(Rejection::new(
            "too_long",
            format!(
                "{field} is {} bytes long; the limit is {limit}",
                value.len()
            ),
        ));
    }
    if value.contains('\0') {
        return Err(Rejection::new(
            "nul_character",
            format!("{field} contains a NUL character"),
        ));
    }
    Ok(())
}

/// The checked `data` and its size as JSON.
fn check_data(
    value: serde_json::Value,
    limit: usize,
) -> Result<(serde_json::Value, usize), Rejection> {
    if !value.is_object() {
        return Err(Rejection::new("data", "data must be a JSON object"));
    }
    /// `depth` is the level `value` would sit at if it is a container.
    fn walk(value: &serde_json::Value, depth: usize) -> Result<(), Rejection> {
        let too_deep = || {
            Err(Rejection::new(
                "data",
                format!("data is nested deeper than {MAX_DATA_DEPTH} levels of objects and arrays"),
            ))
        };
        match value {
            serde_json::Value::String(s) if s.contains('\0') => Err(Rejection::new(
                "nul_character",
                "data holds a string with a NUL character",
            )),
            serde_json::Value::Array(_) | serde_json::Value::Object(_)
                if depth > MAX_DATA_DEPTH =>
            {
                too_deep()
            }
            serde_json::Value::Array(items) => items.iter().try_for_each(|v| walk(v, depth + 1)),
            serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
                if k.contains('\0') {
                    return Err(Rejection::new(
                        "nul_character",
                        "data holds a key with a NUL character",
                    ));
                }
                walk(v, depth + 1)
            }),
            _ => Ok(()),
        }
    }
    walk(&value, 1)?;
    let size = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
    if size > limit {
        return Err(Rejection::new(
            "data",
            format!("data is {size} bytes as JSON; the limit is {limit}"),
        ));
    }
    Ok((value, size))
}

/// Parses a money amount: plain decimal digits with an optional point and
/// at most four fractional digits. No sign, exponent, NaN or infinity.
pub fn parse_amount(text: &str) -> Result<BigDecimal, Rejection> {
    let bad = |why: &str| {
        Rejection::new(
            "amount",
            format!("purchase.amount `{}` {why}", truncate(text, 40)),
        )
    };
    if text.is_empty() {
        return Err(bad("is empty: send a decimal string such as \"19.99\""));
    }
    let (integer, fraction) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if text.starts_with('-') {
        return Err(bad("is negative"));
    }
    if !digits(integer) || fraction.is_some_and(|f| !digits(f)) {
        return Err(bad("is not a plain decimal number such as \"19.99\""));
    }
    if fraction.is_some_and(|f| f.len() > AMOUNT_FRACTION_DIGITS) {
        return Err(bad(&format!(
            "has more than {AMOUNT_FRACTION_DIGITS} decimal places"
        )));
    }
    if integer.trim_start_matches('0').len() > AMOUNT_INTEGER_DIGITS {
        return Err(bad(&format!(
            "has more than {AMOUNT_INTEGER_DIGITS} digits before the point"
        )));
    }
    text.parse::<BigDecimal>()
        .map_err(|_| bad("is not a decimal number"))
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    format!("{}…", crate::text::truncate(text, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn clock() -> Clock {
        Clock {
            received_at: Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap(),
            sent_at: None,
        }
    }

    fn limits() -> EventLimits {
        EventLimits {
            max_data_bytes: 1024,
            max_string_bytes: 2048,
        }
    }

    fn click() -> RawEvent {
        RawEvent {
            event_id: "0195f3c2-7b7e-7c3a-9d1e-2f4a5b6c7d8e".into(),
            event_type: "click".into(),
            timestamp: Some(Utc.with_ymd_and_hms(2026, 1, 10, 11, 0, 0).unwrap()),
            user_id: "u1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_click_is_valid() {
        let valid = validate(click(), &clock(), &limits()).unwrap();
        assert_eq!(valid.event_type, "click");
        assert_eq!(valid.user_id.as_deref(), Some("u1"));
        assert_eq!(valid.detail, Detail::None);
    }

    #[test]
    fn missing_timestamp_means_now_and_skew_is_corrected() {
        let c = clock();
        let now = validate(
            RawEvent {
                timestamp: None,
                ..click()
            },
            &c,
            &limits(),
        )
        .unwrap();
        assert_eq!(now.timestamp, c.received_at);

        // The client's clock is 5 minutes fast: it says it sent at 12:05.
        let skewed = Clock {
            sent_at: Some(c.received_at + TimeDelta::minutes(5)),
            ..c
        };
        let event = RawEvent {
            timestamp: Some(c.received_at + TimeDelta::minutes(4)),
            ..click()
        };
        let valid = validate(event, &skewed, &limits()).unwrap();
        assert_eq!(valid.timestamp, c.received_at - TimeDelta::minutes(1));
    }

    #[test]
    fn far_future_is_rejected() {
        let c = clock();
        let event = RawEvent {
            timestamp: Some(c.received_at + TimeDelta::days(7)),
            ..click()
        };
        let rejection = validate(event, &c, &limits()).unwrap_err();
        assert_eq!(rejection.class, "timestamp");
        assert!(rejection.reason.contains("future"));
    }

    #[test]
    fn amounts_are_exact_and_strict() {
        assert_eq!(parse_amount("19.99").unwrap().to_string(), "19.99");
        assert_eq!(parse_amount("0").unwrap().to_string(), "0");
        assert_eq!(
            parse_amount("12345678901234.1234").unwrap().to_string(),
            "12345678901234.1234"
        );
        for bad in [
            "abc",
            "1e3",
            "NaN",
            "inf",
            "-1",
            "1.23456",
            "",
            ".5",
            "5.",
            "1,5",
            " 1",
            "+1",
            "123456789012345",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn details_must_match_types() {
        let pageview_without = RawEvent {
            event_type: "pageview".into(),
            ..click()
        };
        assert_eq!(
            validate(pageview_without, &clock(), &limits())
                .unwrap_err()
                .class,
            "detail"
        );
        let click_with_purchase = RawEvent {
            detail: RawDetail::Purchase {
                product_id: "p".into(),
                quantity: 1,
                amount: "1".into(),
            },
            ..click()
        };
        assert_eq!(
            validate(click_with_purchase, &clock(), &limits())
                .unwrap_err()
                .class,
            "detail"
        );
        let purchase = RawEvent {
            event_type: "purchase".into(),
            detail: RawDetail::Purchase {
                product_id: "p".into(),
                quantity: 0,
                amount: "1".into(),
            },
            ..click()
        };
        assert_eq!(
            validate(purchase, &clock(), &limits()).unwrap_err().class,
            "quantity"
        );
    }

    #[test]
    fn event_types_are_lowercase_names() {
        assert!(parse_event_type("sign_up").is_ok());
        assert!(parse_event_type("checkout.step-2").is_ok());
        for bad in [
            "",
            "Click",
            "1click",
            "click me",
            "a'; DROP TABLE events; --",
            &"x".repeat(65),
        ] {
            assert!(parse_event_type(bad).is_err(), "{bad} accepted");
        }
    }

    /// `levels` objects nested in each other around `leaf`.
    fn nested(levels: usize, leaf: serde_json::Value) -> serde_json::Value {
        (1..levels).fold(
            serde_json::json!({ "a": leaf }),
            |inner, _| serde_json::json!({ "a": inner }),
        )
    }

    #[test]
    fn data_nests_sixteen_levels_of_containers_whatever_the_leaf() {
        let check = |data| {
            validate(
                RawEvent {
                    data: Some(data),
                    ..click()
                },
                &clock(),
                &limits(),
            )
        };
        // 16 objects: accepted with a scalar, an empty object or an empty
        // array inside the innermost (the empty ones are the 16th level).
        assert!(check(nested(16, serde_json::json!(1))).is_ok());
        assert!(check(nested(16, serde_json::json!("s"))).is_ok());
        assert!(check(nested(15, serde_json::json!({}))).is_ok());
        assert!(check(nested(15, serde_json::json!([1, [], {}]))).is_err());
        assert!(check(nested(14, serde_json::json!([1, [], {}]))).is_ok());
        // 17 levels: refused, whatever the innermost holds.
        for leaf in [
            serde_json::json!(1),
            serde_json::json!({}),
            serde_json::json!([]),
        ] {
            let rejection = check(nested(17, leaf)).unwrap_err();
            assert_eq!(rejection.class, "data");
            assert!(
                rejection.reason.contains("deeper than 16"),
                "{}",
                rejection.reason
            );
        }
        assert!(check(nested(16, serde_json::json!({}))).is_err());
        assert!(check(nested(16, serde_json::json!([]))).is_err());
    }

    #[test]
    fn data_limits_hold() {
        let big = serde_json::json!({ "k": "x".repeat(2000) });
        let event = RawEvent {
            data: Some(big),
            ..click()
        };
        assert_eq!(
            validate(event, &clock(), &limits()).unwrap_err().class,
            "data"
        );
        let mut deep = serde_json::json!(1);
        for _ in 0..20 {
            deep = serde_json::json!({ "a": deep });
        }
        let event = RawEvent {
            data: Some(deep),
            ..click()
        };
        assert!(
            validate(event, &clock(), &limits())
                .unwrap_err()
                .reason
                .contains("nested")
        );
    }
}
