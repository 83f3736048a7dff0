//! Conversions between proto messages and domain types, at the edge: the
//! only place that knows proto numbering. Each proto enum is paired with its
//! domain enum once, in [`proto_enum!`], which gives both directions and the
//! error for a missing or unknown value.

use chrono::{DateTime, Utc};
use prost_types::value::Kind;

use super::proto;
use crate::domain::alert::{Comparison, NotificationState};
use crate::domain::event::{RawDetail, RawEvent, Rejection};
use crate::domain::metric::{Dimension, Filter, Granularity, Metric, MetricQuery};
use crate::domain::names::join;
use crate::error::Error;

/// A domain enum read from a proto enum field.
pub trait FromProto: Sized {
    /// The value of `field` (named in the error), which holds `value`.
    fn from_proto(field: &str, value: i32) -> Result<Self, Error>;
}

/// Pairs a domain enum with its proto enum: `From<domain> for proto` and
/// [`FromProto`]. With `required`, the proto's `UNSPECIFIED` is refused with
/// the list of accepted names; without, it must be one of the pairs.
macro_rules! proto_enum {
    ($domain:ident <=> $proto:ident, required, { $($d:ident <=> $p:ident),+ $(,)? }) => {
        proto_enum!(@into $domain, $proto, { $($d <=> $p),+ });
        impl FromProto for $domain {
            fn from_proto(field: &str, value: i32) -> Result<Self, Error> {
                match proto::$proto::try_from(value) {
                    $(Ok(proto::$proto::$p) => Ok($domain::$d),)+
                    Ok(proto::$proto::Unspecified) => Err(Error::InvalidArgument(format!(
                        "{field} is required ({})",
                        join([$(proto::$proto::$p.as_str_name()),+].into_iter())
                    ))),
                    Err(_) => Err(unknown(field, value, stringify!($proto))),
                }
            }
        }
    };
    ($domain:ident <=> $proto:ident, { $($d:ident <=> $p:ident),+ $(,)? }) => {
        proto_enum!(@into $domain, $proto, { $($d <=> $p),+ });
        impl FromProto for $domain {
            fn from_proto(field: &str, value: i32) -> Result<Self, Error> {
                match proto::$proto::try_from(value) {
                    $(Ok(proto::$proto::$p) => Ok($domain::$d),)+
                    Err(_) => Err(unknown(field, value, stringify!($proto))),
                }
            }
        }
    };
    (@into $domain:ident, $proto:ident, { $($d:ident <=> $p:ident),+ }) => {
        impl From<$domain> for proto::$proto {
            fn from(value: $domain) -> Self {
                match value {
                    $($domain::$d => proto::$proto::$p),+
                }
            }
        }
    };
}

fn unknown(field: &str, value: i32, name: &str) -> Error {
    Error::InvalidArgument(format!("{field} {value} is not a known {name}"))
}

proto_enum!(Metric <=> Metric, required, {
    Events <=> Events,
    UniqueUsers <=> UniqueUsers,
    Pageviews <=> Pageviews,
    Purchases <=> Purchases,
    Revenue <=> Revenue,
    Quantity <=> Quantity,
});

proto_enum!(Granularity <=> Granularity, required, {
    Minute <=> Minute,
    Hour <=> Hour,
    Day <=> Day,
    Total <=> Total,
});

proto_enum!(Dimension <=> Dimension, {
    None <=> Unspecified,
    EventType <=> EventType,
    PageUrl <=> PageUrl,
    ProductId <=> ProductId,
});

proto_enum!(Comparison <=> Comparison, required, {
    GreaterThan <=> GreaterThan,
    GreaterOrEqual <=> GreaterOrEqual,
    LessThan <=> LessThan,
    LessOrEqual <=> LessOrEqual,
});

impl From<NotificationState> for proto::AlertState {
    fn from(state: NotificationState) -> Self {
        match state {
            NotificationState::Firing => proto::AlertState::Firing,
            NotificationState::Resolved => proto::AlertState::Resolved,
        }
    }
}

/// A proto filter, validated (`max_string_bytes`: the ingest limit).
pub fn filter(filter: Option<proto::Filter>, max_string_bytes: usize) -> Result<Filter, Error> {
    let filter = filter.unwrap_or_default();
    Filter::new(
        filter.event_types,
        filter.page_url,
        filter.product_id,
        filter.user_id,
        max_string_bytes,
    )
}

impl From<Filter> for proto::Filter {
    fn from(filter: Filter) -> Self {
        proto::Filter {
            event_types: filter.event_types,
            page_url: filter.page_url.unwrap_or_default(),
            product_id: filter.product_id.unwrap_or_default(),
            user_id: filter.user_id.unwrap_or_default(),
        }
    }
}

/// A required timestamp field as a UTC time.
pub fn required_time(
    field: &str,
    ts: Option<prost_types::Timestamp>,
) -> Result<DateTime<Utc>, Error> {
    let ts = ts.ok_or_else(|| Error::InvalidArgument(format!("{field} is required")))?;
    timestamp(&ts).ok_or_else(|| Error::InvalidArgument(format!("{field} is out of range")))
}

/// Converts and validates a `GetMetricsRequest`.
pub fn metric_query(
    request: proto::GetMetricsRequest,
    max_string_bytes: usize,
) -> Result<MetricQuery, Error> {
    let metric = Metric::from_proto("metric", request.metric)?;
    let start = required_time("start", request.start)?;
    let end = required_time("end", request.end)?;
    let filter = filter(request.filter, max_string_bytes)?;
    MetricQuery::new(
        metric,
        start,
        end,
        Granularity::from_proto("granularity", request.granularity)?,
        filter,
        Dimension::from_proto("group_by", request.group_by)?,
        request.limit,
    )
}

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
