//! Bad input everywhere: for every RPC, a table of malformed and hostile
//! requests (unknown enum numbers, enormous strings, deeply nested `data`,
//! SQL metacharacters, "negative" windows, huge limits, odd metadata,
//! invalid UTF-8 and non-protobuf bytes on the wire) with
//! the status each must get. Nothing may answer INTERNAL or UNKNOWN, and the
//! server keeps serving afterwards.

use chrono::{TimeDelta, Utc};
use prost_types::value::Kind;
use pulse::grpc::convert::to_timestamp;
use pulse::grpc::proto::*;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::TestApp;
use crate::ingest::{click, pageview, purchase};

const SQL: &str = "'; DROP TABLE events; --";

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    result.err().map_or(Code::Ok, |s| s.code())
}

fn good_query() -> GetMetricsRequest {
    let end = Utc::now();
    GetMetricsRequest {
        metric: Metric::Events as i32,
        start: Some(to_timestamp(end - TimeDelta::hours(1))),
        end: Some(to_timestamp(end)),
        granularity: Granularity::Minute as i32,
        filter: None,
        group_by: Dimension::Unspecified as i32,
        limit: 0,
    }
}

fn good_rule() -> AlertRule {
    AlertRule {
        id: String::new(),
        name: "hostile".into(),
        metric: Metric::Events as i32,
        filter: None,
        window_seconds: 60,
        comparison: Comparison::GreaterThan as i32,
        threshold: 10.0,
        for_seconds: 0,
        enabled: true,
    }
}

/// `data` nested `levels` deep.
fn nested(levels: usize) -> prost_types::Struct {
    let mut inner = prost_types::Struct::default();
    for _ in 0..levels {
        let mut outer = prost_types::Struct::default();
        outer.fields.insert(
            "a".into(),
            prost_types::Value {
                kind: Some(Kind::StructValue(inner)),
            },
        );
        inner = outer;
    }
    inner
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_get_metrics_requests_get_clear_statuses() {
    let app = TestApp::spawn().await;
    let now = Utc::now();
    let filter = |f: Filter| Some(f);
    let table: Vec<(&str, GetMetricsRequest, Code)> = vec![
        ("valid", good_query(), Code::Ok),
        (
            "unknown metric",
            GetMetricsRequest {
                metric: 99,
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "negative metric",
            GetMetricsRequest {
                metric: -1,
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "unknown granularity",
            GetMetricsRequest {
                granularity: 77,
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "unknown dimension",
            GetMetricsRequest {
                group_by: 1234,
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "no start",
            GetMetricsRequest {
                start: None,
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "end before start (a negative window)",
            GetMetricsRequest {
                start: Some(to_timestamp(now)),
                end: Some(to_timestamp(now - TimeDelta::hours(1))),
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "timestamp out of range",
            GetMetricsRequest {
                start: Some(prost_types::Timestamp {
                    seconds: i64::MIN,
                    nanos: -5,
                }),
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "ten years of minutes",
            GetMetricsRequest {
                start: Some(to_timestamp(now - TimeDelta::days(3650))),
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "huge limit",
            GetMetricsRequest {
                group_by: Dimension::PageUrl as i32,
                limit: u32::MAX,
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "SQL in filters is data",
            GetMetricsRequest {
                filter: filter(Filter {
                    event_types: vec![],
                    page_url: SQL.into(),
                    product_id: SQL.into(),
                    user_id: SQL.into(),
                }),
                ..good_query()
            },
            Code::Ok,
        ),
        (
            "SQL as an event type",
            GetMetricsRequest {
                filter: filter(Filter {
                    event_types: vec![SQL.into()],
                    ..Default::default()
                }),
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "a 1 MB page_url",
            GetMetricsRequest {
                filter: filter(Filter {
                    page_url: "x".repeat(1 << 20),
                    ..Default::default()
                }),
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "a 5 MB message",
            GetMetricsRequest {
                filter: filter(Filter {
                    page_url: "x".repeat(5 << 20),
                    ..Default::default()
                }),
                ..good_query()
            },
            Code::ResourceExhausted,
        ),
        (
            "10,000 event types",
            GetMetricsRequest {
                filter: filter(Filter {
                    event_types: vec!["click".into(); 10_000],
                    ..Default::default()
                }),
                ..good_query()
            },
            Code::InvalidArgument,
        ),
        (
            "NUL in user_id",
            GetMetricsRequest {
                filter: filter(Filter {
                    user_id: "a\0b".into(),
                    ..Default::default()
                }),
                ..good_query()
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, request, expected) in table {
        let got = code(app.query().get_metrics(request).await);
        assert_eq!(got, expected, "GetMetrics: {what}");
    }
    // Non-ASCII and binary metadata are ignored, not fatal.
    let mut request = tonic::Request::new(good_query());
    request.metadata_mut().insert_bin(
        "x-note-bin",
        tonic::metadata::MetadataValue::from_bytes(&[0xff, 0x00, 0xfe]),
    );
    request.metadata_mut().insert(
        "x-note",
        tonic::metadata::MetadataValue::try_from("caf\u{e9}".as_bytes()).expect("opaque bytes"),
    );
    assert_eq!(code(app.query().get_metrics(request).await), Code::Ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_events_are_rejected_one_by_one_and_streams_by_status() {
    let app = TestApp::spawn().await;
    // Past MAX_DATA_DEPTH (16) but within what protobuf decodes: one event.
    let deep = Event {
        data: Some(nested(20)),
        ..click(Uuid::new_v4(), "u")
    };
    let nan = Event {
        data: Some(prost_types::Struct {
            fields: [(
                "n".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        }),
        ..click(Uuid::new_v4(), "u")
    };
    let per_event: Vec<(&str, Event, bool)> = vec![
        ("valid click", click(Uuid::new_v4(), "u"), true),
        ("SQL as user id is data", click(Uuid::new_v4(), SQL), true),
        (
            "SQL as page url is data",
            pageview(Uuid::new_v4(), "u", SQL),
            true,
        ),
        (
            "SQL as event type",
            Event {
                event_type: SQL.into(),
                ..click(Uuid::new_v4(), "u")
            },
            false,
        ),
        (
            "SQL as event id",
            Event {
                event_id: SQL.into(),
                ..click(Uuid::new_v4(), "u")
            },
            false,
        ),
        (
            "nil event id",
            Event {
                event_id: Uuid::nil().to_string(),
                ..click(Uuid::new_v4(), "u")
            },
            false,
        ),
        (
            "unknown event type casing",
            Event {
                event_type: "CLICK".into(),
                ..click(Uuid::new_v4(), "u")
            },
            false,
        ),
        (
            "pageview without detail",
            Event {
                event_type: "pageview".into(),
                ..click(Uuid::new_v4(), "u")
            },
            false,
        ),
        (
            "enormous page url",
            pageview(Uuid::new_v4(), "u", &"x".repeat(100_000)),
            false,
        ),
        (
            "enormous user id",
            click(Uuid::new_v4(), &"u".repeat(100_000)),
            false,
        ),
        ("NUL in user id", click(Uuid::new_v4(), "a\0b"), false),
        ("data nested 20 deep", deep, false),
        ("NaN in data", nan, false),
        (
            "negative quantity",
            purchase(Uuid::new_v4(), "u", "p", -3, "1.00"),
            false,
        ),
        (
            "negative amount",
            purchase(Uuid::new_v4(), "u", "p", 1, "-1.00"),
            false,
        ),
        (
            "amount with exponent",
            purchase(Uuid::new_v4(), "u", "p", 1, "1e9"),
            false,
        ),
        (
            "amount too precise",
            purchase(Uuid::new_v4(), "u", "p", 1, "1.00001"),
            false,
        ),
        (
            "timestamp out of range",
            Event {
                timestamp: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: -1,
                }),
                ..click(Uuid::new_v4(), "u")
            },
            false,
        ),
        (
            "a year in the future",
            Event {
                timestamp: Some(to_timestamp(Utc::now() + TimeDelta::days(365))),
                ..click(Uuid::new_v4(), "u")
            },
            false,
        ),
    ];
    let accepted = per_event.iter().filter(|(_, _, ok)| *ok).count() as u64;
    let events: Vec<Event> = per_event.iter().map(|(_, e, _)| e.clone()).collect();
    let response = app
        .ingest()
        .ingest_events(tokio_stream::iter(vec![IngestEventsRequest {
            events,
            sent_at: None,
        }]))
        .await
        .expect("per-event problems never fail the stream")
        .into_inner();
    let rejected: Vec<u64> = response.errors.iter().map(|e| e.index).collect();
    for (i, (what, _, ok)) in per_event.iter().enumerate() {
        assert_eq!(
            !rejected.contains(&(i as u64)),
            *ok,
            "IngestEvents: {what}: {:?}",
            response.errors
        );
    }
    assert_eq!(response.accepted, accepted);

    // Whole-stream failures.
    let too_many = IngestEventsRequest {
        events: (0..10_001).map(|_| click(Uuid::new_v4(), "u")).collect(),
        sent_at: None,
    };
    let status = app
        .ingest()
        .ingest_events(tokio_stream::iter(vec![too_many]))
        .await
        .expect_err("too many events in one message");
    assert_eq!(status.code(), Code::InvalidArgument);
    let huge = IngestEventsRequest {
        events: vec![pageview(Uuid::new_v4(), "u", &"x".repeat(5 << 20))],
        sent_at: None,
    };
    let status = app
        .ingest()
        .ingest_events(tokio_stream::iter(vec![huge]))
        .await
        .expect_err("a message over the size limit");
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Nested past the protobuf decoder's recursion limit: the message
    // cannot be read at all, which is the client's fault.
    let abyss = IngestEventsRequest {
        events: vec![Event {
            data: Some(nested(200)),
            ..click(Uuid::new_v4(), "u")
        }],
        sent_at: None,
    };
    let status = app
        .ingest()
        .ingest_events(tokio_stream::iter(vec![abyss]))
        .await
        .expect_err("an undecodable message");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let skewed = IngestEventsRequest {
        events: vec![click(Uuid::new_v4(), "u")],
        sent_at: Some(prost_types::Timestamp {
            seconds: i64::MIN,
            nanos: 0,
        }),
    };
    let status = app
        .ingest()
        .ingest_events(tokio_stream::iter(vec![skewed]))
        .await
        .expect_err("sent_at out of range");
    assert_eq!(status.code(), Code::InvalidArgument);

    // UpsertUsers.
    let user = |id: &str, name: &str, email: &str| User {
        user_id: id.into(),
        username: name.into(),
        email: email.into(),
    };
    let table: Vec<(&str, Vec<User>, Code)> = vec![
        (
            "valid",
            vec![user("alice", "Alice", "alice@example.com")],
            Code::Ok,
        ),
        (
            "SQL is data",
            vec![user(SQL, SQL, "a@example.com")],
            Code::Ok,
        ),
        (
            "bad email",
            vec![user("bob", "Bob", "not an address")],
            Code::InvalidArgument,
        ),
        (
            "enormous username",
            vec![user("bob", &"b".repeat(100_000), "b@example.com")],
            Code::InvalidArgument,
        ),
        (
            "NUL in user id",
            vec![user("a\0b", "x", "x@example.com")],
            Code::InvalidArgument,
        ),
        (
            "empty user id",
            vec![user("", "x", "x@example.com")],
            Code::InvalidArgument,
        ),
        (
            "10,001 users",
            (0..10_001)
                .map(|i| user(&format!("u{i}"), "", ""))
                .collect(),
            Code::InvalidArgument,
        ),
    ];
    for (what, users, expected) in table {
        let got = code(
            app.ingest()
                .upsert_users(UpsertUsersRequest { users })
                .await,
        );
        assert_eq!(got, expected, "UpsertUsers: {what}");
    }

    // Still serving, and the tables are all there.
    let response = app
        .ingest()
        .ingest_events(tokio_stream::iter(vec![IngestEventsRequest {
            events: vec![click(Uuid::new_v4(), "after")],
            sent_at: None,
        }]))
        .await
        .expect("still serving")
        .into_inner();
    assert_eq!(response.accepted, 1);
    assert_eq!(
        crate::ingest::count(&app.db, "events").await,
        accepted as i64 + 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_alert_requests_get_clear_statuses() {
    let app = TestApp::spawn().await;
    let rule = |r: AlertRule| CreateAlertRuleRequest { rule: Some(r) };
    let table: Vec<(&str, CreateAlertRuleRequest, Code)> = vec![
        ("valid", rule(good_rule()), Code::Ok),
        (
            "SQL as a name is data",
            rule(AlertRule {
                name: SQL.into(),
                ..good_rule()
            }),
            Code::Ok,
        ),
        (
            "no rule",
            CreateAlertRuleRequest { rule: None },
            Code::InvalidArgument,
        ),
        (
            "empty name",
            rule(AlertRule {
                name: "   ".into(),
                ..good_rule()
            }),
            Code::InvalidArgument,
        ),
        (
            "enormous name",
            rule(AlertRule {
                name: "n".repeat(100_000),
                ..good_rule()
            }),
            Code::InvalidArgument,
        ),
        (
            "unknown metric",
            rule(AlertRule {
                metric: 42,
                ..good_rule()
            }),
            Code::InvalidArgument,
        ),
        (
            "unknown comparison",
            rule(AlertRule {
                comparison: -7,
                ..good_rule()
            }),
            Code::InvalidArgument,
        ),
        (
            "zero window",
            rule(AlertRule {
                window_seconds: 0,
                ..good_rule()
            }),
            Code::InvalidArgument,
        ),
        (
            "a negative window sent as uint32 (-1 → 4294967295)",
            rule(AlertRule {
                window_seconds: u32::MAX,
                ..good_rule()
            }),
            Code::InvalidArgument,
        ),
        (
            "for_seconds too long",
            rule(AlertRule {
                for_seconds: u32::MAX,
                ..good_rule()
            }),
            Code::InvalidArgument,
        ),
        (
            "NaN threshold",
            rule(AlertRule {
                threshold: f64::NAN,
                ..good_rule()
            }),
            Code::InvalidArgument,
        ),
        (
            "infinite threshold",
            rule(AlertRule {
                threshold: f64::INFINITY,
                ..good_rule()
            }),
            Code::InvalidArgument,
        ),
        (
            "SQL as an event type filter",
            rule(AlertRule {
                filter: Some(Filter {
                    event_types: vec![SQL.into()],
                    ..Default::default()
                }),
                ..good_rule()
            }),
            Code::InvalidArgument,
        ),
    ];
    for (what, request, expected) in table {
        let got = code(app.alerts().create_alert_rule(request).await);
        assert_eq!(got, expected, "CreateAlertRule: {what}");
    }

    for (what, id, expected) in [
        ("SQL as an id", SQL.to_owned(), Code::InvalidArgument),
        ("empty id", String::new(), Code::InvalidArgument),
        ("enormous id", "f".repeat(100_000), Code::InvalidArgument),
        ("unknown id", Uuid::new_v4().to_string(), Code::NotFound),
    ] {
        let got = code(
            app.alerts()
                .get_alert_rule(GetAlertRuleRequest { id: id.clone() })
                .await,
        );
        assert_eq!(got, expected, "GetAlertRule: {what}");
        let got = code(
            app.alerts()
                .delete_alert_rule(DeleteAlertRuleRequest { id: id.clone() })
                .await,
        );
        assert_eq!(got, expected, "DeleteAlertRule: {what}");
        let got = code(
            app.alerts()
                .update_alert_rule(UpdateAlertRuleRequest {
                    rule: Some(AlertRule { id, ..good_rule() }),
                })
                .await,
        );
        assert_eq!(got, expected, "UpdateAlertRule: {what}");
    }
    assert_eq!(
        code(
            app.alerts()
                .update_alert_rule(UpdateAlertRuleRequest { rule: None })
                .await
        ),
        Code::InvalidArgument,
        "UpdateAlertRule without a rule"
    );
    assert_eq!(
        code(
            app.alerts()
                .list_alert_rules(ListAlertRulesRequest {})
                .await
        ),
        Code::Ok
    );

    let table: Vec<(&str, WatchAlertsRequest, Code)> = vec![
        ("valid", WatchAlertsRequest::default(), Code::Ok),
        (
            "after_id beyond i64",
            WatchAlertsRequest {
                after_id: u64::MAX,
                rule_ids: vec![],
            },
            Code::InvalidArgument,
        ),
        (
            "SQL as a rule id",
            WatchAlertsRequest {
                after_id: 0,
                rule_ids: vec![SQL.into()],
            },
            Code::InvalidArgument,
        ),
        (
            "2,000 rule ids",
            WatchAlertsRequest {
                after_id: 0,
                rule_ids: vec![Uuid::new_v4().to_string(); 2_000],
            },
            Code::InvalidArgument,
        ),
        (
            "unknown rule ids are allowed",
            WatchAlertsRequest {
                after_id: 0,
                rule_ids: vec![Uuid::new_v4().to_string()],
            },
            Code::Ok,
        ),
    ];
    for (what, request, expected) in table {
        let got = code(app.alerts().watch_alerts(request).await);
        assert_eq!(got, expected, "WatchAlerts: {what}");
    }
}

/// Sends bytes as they are, so a test can put invalid protobuf on the wire.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_on_the_wire_is_invalid_argument() {
    let app = TestApp::spawn().await;
    // Field 1 (a string) holding the bytes FF FE, which are not UTF-8.
    let bad_string = vec![0x0a, 0x02, 0xff, 0xfe];
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());

    grpc.ready().await.expect("ready");
    let status = grpc
        .unary(
            tonic::Request::new(bad_string.clone()),
            http::uri::PathAndQuery::from_static("/pulse.v1.AlertService/GetAlertRule"),
            RawCodec,
        )
        .await
        .expect_err("GetAlertRule with a non-UTF-8 id");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // IngestEventsRequest.events[0].event_id = FF FE, mid-stream.
    let mut event = vec![0x0a, bad_string.len() as u8];
    event.extend_from_slice(&bad_string);
    grpc.ready().await.expect("ready");
    let status = grpc
        .client_streaming(
            tonic::Request::new(tokio_stream::iter(vec![event])),
            http::uri::PathAndQuery::from_static("/pulse.v1.IngestService/IngestEvents"),
            RawCodec,
        )
        .await
        .expect_err("IngestEvents with a non-UTF-8 event id");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Garbage that is not protobuf at all.
    grpc.ready().await.expect("ready");
    let status = grpc
        .unary(
            tonic::Request::new(vec![0xff; 16]),
            http::uri::PathAndQuery::from_static("/pulse.v1.QueryService/GetMetrics"),
            RawCodec,
        )
        .await
        .expect_err("GetMetrics with garbage");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// A unary request over `--max-message-bytes` is refused before any handler
/// with RESOURCE_EXHAUSTED naming the limit (tonic says OUT_OF_RANGE; the
/// decode-errors layer maps it by code), and the server goes on answering.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_unary_request_is_resource_exhausted() {
    let app = TestApp::spawn_with(|s| s.limits.max_message_bytes = 16 * 1024).await;
    let now = Utc::now();
    let request = |page_url: String| GetMetricsRequest {
        metric: Metric::Events as i32,
        start: Some(to_timestamp(now - TimeDelta::hours(1))),
        end: Some(to_timestamp(now)),
        granularity: Granularity::Total as i32,
        filter: Some(Filter {
            page_url,
            ..Default::default()
        }),
        ..Default::default()
    };
    let status = app
        .query()
        .get_metrics(request("/".repeat(32 * 1024)))
        .await
        .expect_err("over the message limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("PULSE_MAX_MESSAGE_BYTES"),
        "{}",
        status.message()
    );
    // The server goes on answering.
    let fine = app.query().get_metrics(request("/home".into())).await;
    assert!(fine.is_ok(), "{fine:?}");
}
