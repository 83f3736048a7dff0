//! Conversions between proto messages and domain types, at the edge.

use chrono::{DateTime, Utc};
use prost_types::value::Kind;

use super::proto;
use crate::domain::event::{RawDetail, RawEvent, Rejection};

/// A proto timestamp as a UTC time; `None` when it is out of range.
pub fn timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    u32::try_from(ts.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
}

/// A UTC time as a proto timestamp.
pub fn to_timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

impl TryFrom<proto::Event> for RawEvent {
    type Error = Rejection;

    fn try_from(event: proto::Event) -> Result<Self, Self::Error> {
        let timestamp = match &event.timestamp {
            None => None,
            Some(ts) => Some(
                timestamp(ts)
                    .ok_or_else(|| Rejection::new("timestamp", "timestamp is out of range"))?,
            ),
        };
        let data = event.data.map(struct_to_json).transpose()?;
        let detail = match event.detail {
            None => RawDetail::None,
            Some(proto::event::Detail::Pageview(p)) => RawDetail::Pageview {
                page_url: p.page_url,
            },
            Some(proto::event::Detail::Purchase(p)) => RawDetail::Purchase {
                product_id: p.product_id,
                quantity: p.quantity,
                amount: p.amount,
            },
        };
        Ok(RawEvent {
            event_id: event.event_id,
            event_type: event.event_type,
            timestamp,
            user_id: event.user_id,
            data,
            detail,
        })
    }
}

/// A `google.protobuf.Struct` as a JSON object. Non-finite numbers, which
/// JSON cannot hold, are rejected.
pub fn struct_to_json(value: prost_types::Struct) -> Result<serde_json::Value, Rejection> {
    let mut map = serde_json::Map::with_capacity(value.fields.len());
    for (key, field) in value.fields {
        map.insert(key, value_to_json(field)?);
    }
    Ok(serde_json::Value::Object(map))
}

fn value_to_json(value: prost_types::Value) -> Result<serde_json::Value, Rejection> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .ok_or_else(|| {
                Rejection::new(
                    "data",
                    format!("data holds the number {n}, which JSON cannot store"),
                )
            })?,
        Some(Kind::StructValue(s)) => struct_to_json(s)?,
        Some(Kind::ListValue(list)) => serde_json::Value::Array(
            list.values
                .into_iter()
                .map(value_to_json)
                .collect::<Result<_, _>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_become_json_and_nan_is_refused() {
        let mut s = prost_types::Struct::default();
        s.fields.insert(
            "n".into(),
            prost_types::Value {
                kind: Some(Kind::NumberValue(1.5)),
            },
        );
        s.fields.insert(
            "s".into(),
            prost_types::Value {
                kind: Some(Kind::StringValue("x".into())),
            },
        );
        assert_eq!(
            struct_to_json(s).unwrap(),
            serde_json::json!({"n": 1.5, "s": "x"})
        );
        let mut nan = prost_types::Struct::default();
        nan.fields.insert(
            "n".into(),
            prost_types::Value {
                kind: Some(Kind::NumberValue(f64::NAN)),
            },
        );
        assert!(struct_to_json(nan).is_err());
    }

    #[test]
    fn out_of_range_timestamps_are_none() {
        assert!(
            timestamp(&prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_none()
        );
        assert!(
            timestamp(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_none()
        );
        assert_eq!(
            timestamp(&prost_types::Timestamp {
                seconds: 60,
                nanos: 0
            })
            .unwrap()
            .timestamp(),
            60
        );
    }
}
