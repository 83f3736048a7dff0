//! IngestService: counts, validation, idempotency, retries, concurrency.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use pulse::grpc::proto::*;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase};

/// Builders for the events tests send.
pub fn click(id: Uuid, user: &str) -> Event {
    Event {
        event_id: id.to_string(),
        event_type: "click".into(),
        timestamp: None,
        user_id: user.into(),
        data: None,
        detail: None,
    }
}

pub fn pageview(id: Uuid, user: &str, url: &str) -> Event {
    Event {
        event_type: "pageview".into(),
        detail: Some(event::Detail::Pageview(Pageview {
            page_url: url.into(),
        })),
        ..click(id, user)
    }
}

pub fn purchase(id: Uuid, user: &str, product: &str, quantity: i32, amount: &str) -> Event {
    Event {
        event_type: "purchase".into(),
        detail: Some(event::Detail::Purchase(Purchase {
            product_id: product.into(),
            quantity,
            amount: amount.into(),
        })),
        ..click(id, user)
    }
}

pub fn message(events: Vec<Event>) -> IngestEventsRequest {
    IngestEventsRequest {
        events,
        sent_at: None,
    }
}

/// Sends `messages` as one stream and returns the response or status.
pub async fn ingest(
    app: &TestApp,
    messages: Vec<IngestEventsRequest>,
) -> Result<IngestEventsResponse, tonic::Status> {
    app.ingest()
        .ingest_events(tokio_stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::now_v7()).collect()
}

pub async fn count(db: &TestDatabase, table: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db.connect().await;
    // `table` is a literal from the tests, never input.
    diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
        .get_result::<N>(&mut conn)
        .await
        .expect("count")
        .n
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_and_error_indexes_span_the_whole_stream() {
    let app = TestApp::spawn().await;
    let id = ids(6);
    let bad = Event {
        event_id: "not-a-uuid".into(),
        ..click(id[0], "u1")
    };
    let messages = vec![
        message(vec![
            pageview(id[0], "u1", "/home"),
            click(id[1], "u2"),
            bad.clone(),
        ]),
        message(vec![
            purchase(id[2], "u1", "sku-1", 2, "19.99"),
            pageview(id[0], "u1", "/home"),
        ]),
        message(vec![bad, click(id[3], ""), click(id[4], "u3")]),
    ];
    let response = ingest(&app, messages.clone()).await.expect("ok");
    assert_eq!(
        (response.accepted, response.duplicates, response.rejected),
        (5, 1, 2)
    );
    let indexes: Vec<u64> = response.errors.iter().map(|e| e.index).collect();
    assert_eq!(indexes, vec![2, 5]);
    assert_eq!(response.errors[0].event_id, "not-a-uuid");
    assert!(
        response.errors[0].reason.contains("not a UUID"),
        "{}",
        response.errors[0].reason
    );

    assert_eq!(count(&app.db, "events").await, 5);
    assert_eq!(count(&app.db, "pageviews").await, 1);
    assert_eq!(count(&app.db, "purchases").await, 1);
    assert_eq!(
        count(&app.db, "users").await,
        3,
        "u1, u2, u3; the anonymous click has none"
    );

    // The same stream again: everything valid is a duplicate, nothing changes.
    let again = ingest(&app, messages).await.expect("ok");
    assert_eq!(
        (again.accepted, again.duplicates, again.rejected),
        (0, 6, 2)
    );
    assert_eq!(count(&app.db, "events").await, 5);
    assert_eq!(count(&app.db, "pageviews").await, 1);
    assert_eq!(count(&app.db, "purchases").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_rows_are_exactly_what_was_sent() {
    let app = TestApp::spawn().await;
    let id = ids(3);
    let at = prost_types::Timestamp {
        seconds: 1_767_225_600,
        nanos: 123_000_000,
    }; // 2026-01-01T00:00:00.123Z
    let mut data = prost_types::Struct::default();
    data.fields.insert(
        "browser".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("firefox".into())),
        },
    );
    let events = vec![
        Event {
            timestamp: Some(at),
            data: Some(data),
            ..pageview(id[0], "alice", "/pricing")
        },
        Event {
            timestamp: Some(at),
            ..purchase(id[1], "alice", "sku-9", 3, "1234.5678")
        },
        Event {
            timestamp: Some(at),
            ..click(id[2], "")
        },
    ];
    let response = ingest(&app, vec![message(events)]).await.expect("ok");
    assert_eq!(response.accepted, 3);

    #[derive(QueryableByName, Debug)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        line: String,
    }
    let mut conn = app.db.connect().await;
    let rows: Vec<String> = diesel::sql_query(
        "SELECT concat_ws('|', event_id, to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'),
                event_type, coalesce(user_id, '-'), coalesce(data::text, '-')) AS line
         FROM event_details ORDER BY event_id",
    )
    .load::<Row>(&mut conn)
    .await
    .expect("rows")
    .into_iter()
    .map(|r| r.line)
    .collect();
    assert_eq!(
        rows,
        vec![
            format!(
                "{}|2026-01-01 00:00:00.123|pageview|alice|{{\"browser\": \"firefox\"}}",
                id[0]
            ),
            format!("{}|2026-01-01 00:00:00.123|purchase|alice|-", id[1]),
            format!("{}|2026-01-01 00:00:00.123|click|-|-", id[2]),
        ]
    );
    let purchase: Vec<String> = diesel::sql_query(
        "SELECT concat_ws('|', event_id, user_id, product_id, quantity, amount) AS line FROM purchase_details",
    )
    .load::<Row>(&mut conn)
    .await
    .expect("purchase")
    .into_iter()
    .map(|r| r.line)
    .collect();
    assert_eq!(purchase, vec![format!("{}|alice|sku-9|3|1234.5678", id[1])]);
    let pageview: Vec<String> = diesel::sql_query(
        "SELECT concat_ws('|', event_id, user_id, page_url) AS line FROM pageview_details",
    )
    .load::<Row>(&mut conn)
    .await
    .expect("pageview")
    .into_iter()
    .map(|r| r.line)
    .collect();
    assert_eq!(pageview, vec![format!("{}|alice|/pricing", id[0])]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resent_id_with_another_timestamp_is_still_a_duplicate() {
    let app = TestApp::spawn().await;
    let id = Uuid::now_v7();
    let first = Event {
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 0,
        }),
        ..click(id, "u")
    };
    let second = Event {
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_767_312_000,
            nanos: 0,
        }),
        ..click(id, "u")
    };
    assert_eq!(
        ingest(&app, vec![message(vec![first])])
            .await
            .unwrap()
            .accepted,
        1
    );
    let again = ingest(&app, vec![message(vec![second])]).await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 1));
    assert_eq!(count(&app.db, "events").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sent_at_corrects_client_clock_skew() {
    let app = TestApp::spawn().await;
    let id = Uuid::now_v7();
    // The client's clock runs one hour ahead: it stamps the event "now" by
    // its clock, and says it sent the message at that same instant.
    let client_now = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    let ts = pulse::grpc::convert::to_timestamp(client_now);
    let request = IngestEventsRequest {
        events: vec![Event {
            timestamp: Some(ts),
            ..click(id, "u")
        }],
        sent_at: Some(ts),
    };
    let before = chrono::Utc::now();
    assert_eq!(ingest(&app, vec![request]).await.unwrap().accepted, 1);
    let after = chrono::Utc::now();
    let mut conn = app.db.connect().await;
    use pulse::db::schema::events;
    let stored: chrono::DateTime<chrono::Utc> = events::table
        .select(events::timestamp)
        .first(&mut conn)
        .await
        .expect("row");
    assert!(
        stored >= before && stored <= after,
        "stored {stored} not within [{before}, {after}]"
    );
}

/// One bad event, sent between two good ones; what the server must say.
struct Case {
    name: &'static str,
    event: Event,
    reason: &'static str,
}

fn bad_cases() -> Vec<Case> {
    let id = || Uuid::now_v7();
    let week = pulse::grpc::convert::to_timestamp(chrono::Utc::now() + chrono::TimeDelta::days(7));
    let mut big = prost_types::Struct::default();
    big.fields.insert(
        "blob".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("x".repeat(10_000))),
        },
    );
    let mut nan = prost_types::Struct::default();
    nan.fields.insert(
        "n".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
        },
    );
    let mut deep = prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(1.0)),
    };
    for _ in 0..30 {
        let mut s = prost_types::Struct::default();
        s.fields.insert("a".into(), deep);
        deep = prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(s)),
        };
    }
    let Some(prost_types::value::Kind::StructValue(deep)) = deep.kind else {
        unreachable!()
    };
    vec![
        Case {
            name: "malformed uuid",
            event: Event {
                event_id: "1234".into(),
                ..click(id(), "u")
            },
            reason: "not a UUID",
        },
        Case {
            name: "empty event_id",
            event: Event {
                event_id: String::new(),
                ..click(id(), "u")
            },
            reason: "event_id is empty",
        },
        Case {
            name: "nil uuid",
            event: Event {
                event_id: Uuid::nil().to_string(),
                ..click(id(), "u")
            },
            reason: "nil UUID",
        },
        Case {
            name: "empty event_type",
            event: Event {
                event_type: String::new(),
                ..click(id(), "u")
            },
            reason: "event_type is empty",
        },
        Case {
            name: "uppercase event_type",
            event: Event {
                event_type: "Click".into(),
                ..click(id(), "u")
            },
            reason: "lowercase",
        },
        Case {
            name: "sql in event_type",
            event: Event {
                event_type: "x'; DROP TABLE events;--".into(),
                ..click(id(), "u")
            },
            reason: "lowercase",
        },
        Case {
            name: "overlong event_type",
            event: Event {
                event_type: "a".repeat(65),
                ..click(id(), "u")
            },
            reason: "limit is 64",
        },
        Case {
            name: "pageview without detail",
            event: Event {
                detail: None,
                ..pageview(id(), "u", "/")
            },
            reason: "requires detail.pageview",
        },
        Case {
            name: "pageview with empty url",
            event: pageview(id(), "u", ""),
            reason: "page_url is empty",
        },
        Case {
            name: "click with a pageview",
            event: Event {
                event_type: "click".into(),
                ..pageview(id(), "u", "/")
            },
            reason: "only `pageview` events may",
        },
        Case {
            name: "pageview with a purchase",
            event: Event {
                event_type: "pageview".into(),
                ..purchase(id(), "u", "p", 1, "1")
            },
            reason: "requires detail.pageview",
        },
        Case {
            name: "purchase without detail",
            event: Event {
                detail: None,
                ..purchase(id(), "u", "p", 1, "1")
            },
            reason: "requires detail.purchase",
        },
        Case {
            name: "zero quantity",
            event: purchase(id(), "u", "p", 0, "1"),
            reason: "at least 1",
        },
        Case {
            name: "negative quantity",
            event: purchase(id(), "u", "p", -3, "1"),
            reason: "at least 1",
        },
        Case {
            name: "amount abc",
            event: purchase(id(), "u", "p", 1, "abc"),
            reason: "not a plain decimal",
        },
        Case {
            name: "amount 1e3",
            event: purchase(id(), "u", "p", 1, "1e3"),
            reason: "not a plain decimal",
        },
        Case {
            name: "amount NaN",
            event: purchase(id(), "u", "p", 1, "NaN"),
            reason: "not a plain decimal",
        },
        Case {
            name: "amount negative",
            event: purchase(id(), "u", "p", 1, "-5.00"),
            reason: "negative",
        },
        Case {
            name: "amount too many decimals",
            event: purchase(id(), "u", "p", 1, "1.23456"),
            reason: "more than 4 decimal places",
        },
        Case {
            name: "amount empty",
            event: purchase(id(), "u", "p", 1, ""),
            reason: "is empty",
        },
        Case {
            name: "purchase with empty product",
            event: purchase(id(), "u", "", 1, "1"),
            reason: "product_id is empty",
        },
        Case {
            name: "data over the limit",
            event: Event {
                data: Some(big),
                ..click(id(), "u")
            },
            reason: "the limit is 8192",
        },
        Case {
            name: "data with NaN",
            event: Event {
                data: Some(nan),
                ..click(id(), "u")
            },
            reason: "JSON cannot store",
        },
        Case {
            name: "data nested too deep",
            event: Event {
                data: Some(deep),
                ..click(id(), "u")
            },
            reason: "nested deeper",
        },
        Case {
            name: "oversized user_id",
            event: click(id(), &"u".repeat(300)),
            reason: "user_id is 300 bytes",
        },
        Case {
            name: "oversized page_url",
            event: pageview(id(), "u", &format!("/{}", "p".repeat(3000))),
            reason: "page_url is 3001 bytes",
        },
        Case {
            name: "NUL in user_id",
            event: click(id(), "a\0b"),
            reason: "NUL",
        },
        Case {
            name: "timestamp a week ahead",
            event: Event {
                timestamp: Some(week),
                ..click(id(), "u")
            },
            reason: "more than a day in the future",
        },
        Case {
            name: "timestamp out of range",
            event: Event {
                timestamp: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..click(id(), "u")
            },
            reason: "out of range",
        },
        Case {
            name: "timestamp before 1970",
            event: Event {
                timestamp: Some(prost_types::Timestamp {
                    seconds: -86_400,
                    nanos: 0,
                }),
                ..click(id(), "u")
            },
            reason: "before 1970",
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_is_rejected_with_its_reason_and_the_rest_is_stored() {
    let app = TestApp::spawn().await;
    let cases = bad_cases();
    let mut events = Vec::new();
    for case in &cases {
        events.push(click(Uuid::now_v7(), "good"));
        events.push(case.event.clone());
    }
    events.push(click(Uuid::now_v7(), "good"));
    let response = ingest(&app, vec![message(events)])
        .await
        .expect("the stream succeeds");
    assert_eq!(
        response.accepted as usize,
        cases.len() + 1,
        "every valid event is stored"
    );
    assert_eq!(response.rejected as usize, cases.len());
    assert_eq!(response.errors.len(), cases.len());
    for (i, case) in cases.iter().enumerate() {
        let error = &response.errors[i];
        assert_eq!(error.index as usize, 2 * i + 1, "{}", case.name);
        assert!(
            error.reason.contains(case.reason),
            "{}: reason `{}` lacks `{}`",
            case.name,
            error.reason,
            case.reason
        );
    }
    assert_eq!(count(&app.db, "events").await as usize, cases.len() + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_stream_limits_answer_with_status_codes() {
    let app = TestApp::spawn_with(|s| {
        s.limits.max_events_per_message = 5;
        s.limits.max_message_bytes = 64 * 1024;
    })
    .await;
    let too_many = message((0..6).map(|_| click(Uuid::now_v7(), "u")).collect());
    let status = ingest(&app, vec![too_many])
        .await
        .expect_err("too many events");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("limit is 5"),
        "{}",
        status.message()
    );

    let huge = Event {
        user_id: "u".repeat(100 * 1024),
        ..click(Uuid::now_v7(), "u")
    };
    let status = ingest(&app, vec![message(vec![huge])])
        .await
        .expect_err("too large");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("PULSE_MAX_MESSAGE_BYTES"),
        "{}",
        status.message()
    );

    // Events of earlier messages of a failed stream are committed; a resend
    // reports them as duplicates.
    let first = message(vec![click(Uuid::now_v7(), "u")]);
    let status = ingest(
        &app,
        vec![
            first.clone(),
            message((0..6).map(|_| click(Uuid::now_v7(), "u")).collect()),
        ],
    )
    .await
    .expect_err("second message too big");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let resend = ingest(&app, vec![first]).await.expect("ok");
    assert_eq!((resend.accepted, resend.duplicates), (0, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn reported_errors_are_capped_but_counts_stay_exact() {
    let app = TestApp::spawn_with(|s| s.limits.max_errors_reported = 3).await;
    let events = (0..10)
        .map(|_| Event {
            event_id: "bad".into(),
            ..click(Uuid::now_v7(), "u")
        })
        .collect();
    let response = ingest(&app, vec![message(events)]).await.expect("ok");
    assert_eq!(response.rejected, 10);
    assert_eq!(response.errors.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_dropped_midway_then_resent_stores_everything_once() {
    let app = TestApp::spawn().await;
    let batches: Vec<IngestEventsRequest> = (0..10)
        .map(|_| {
            message(
                (0..50)
                    .map(|i| pageview(Uuid::now_v7(), &format!("u{i}"), "/p"))
                    .collect(),
            )
        })
        .collect();

    // Send five batches, then vanish without closing the stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<IngestEventsRequest>(16);
    let mut client = app.ingest();
    let call = tokio::spawn(async move {
        client
            .ingest_events(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for batch in &batches[..5] {
        tx.send(batch.clone()).await.expect("send");
    }
    // Wait until the server has committed some of them, then drop the call.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&app.db, "events").await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call.abort();
    drop(tx);
    let partial = count(&app.db, "events").await;
    assert!(partial > 0 && partial <= 250, "partial = {partial}");

    // The client resends the whole stream.
    let response = ingest(&app, batches).await.expect("ok");
    assert_eq!(response.accepted + response.duplicates, 500);
    assert_eq!(count(&app.db, "events").await, 500);
    assert_eq!(count(&app.db, "pageviews").await, 500);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_streams_with_shared_users_and_ids_both_succeed() {
    let app = TestApp::spawn().await;
    let shared: Vec<Uuid> = ids(2000);
    // Two streams carry the same 2000 events in opposite orders, all from
    // the same 50 brand-new users, in batches of 100.
    let make = |order: Vec<Uuid>| -> Vec<IngestEventsRequest> {
        order
            .chunks(100)
            .map(|chunk| {
                message(
                    chunk
                        .iter()
                        .map(|id| {
                            purchase(*id, &format!("new-{}", id.as_u128() % 50), "sku", 1, "2.50")
                        })
                        .collect(),
                )
            })
            .collect()
    };
    let forward = make(shared.clone());
    let backward = make(shared.iter().rev().copied().collect());
    let (a, b) = tokio::join!(ingest(&app, forward), ingest(&app, backward));
    let (a, b) = (a.expect("stream a"), b.expect("stream b"));
    assert_eq!(a.accepted + b.accepted, 2000, "each event stored once");
    assert_eq!(
        a.duplicates + b.duplicates,
        2000,
        "and a duplicate for the other stream"
    );
    assert_eq!(count(&app.db, "events").await, 2000);
    assert_eq!(count(&app.db, "purchases").await, 2000);
    assert_eq!(count(&app.db, "users").await, 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_users_creates_then_fills_in() {
    let app = TestApp::spawn().await;
    ingest(&app, vec![message(vec![click(Uuid::now_v7(), "ada")])])
        .await
        .expect("ok");
    let user = |id: &str, name: &str, email: &str| User {
        user_id: id.into(),
        username: name.into(),
        email: email.into(),
    };
    let response = app
        .ingest()
        .upsert_users(UpsertUsersRequest {
            users: vec![user("ada", "Ada", "ada@example.com"), user("bob", "", "")],
        })
        .await
        .expect("ok")
        .into_inner();
    assert_eq!((response.created, response.updated), (1, 1));
    // Same values again: nothing changes. An empty field keeps the stored value.
    let response = app
        .ingest()
        .upsert_users(UpsertUsersRequest {
            users: vec![user("ada", "", ""), user("ada", "Ada", "")],
        })
        .await
        .expect("ok")
        .into_inner();
    assert_eq!((response.created, response.updated), (0, 0));
    let mut conn = app.db.connect().await;
    use pulse::db::schema::users;
    let stored: (Option<String>, Option<String>) = users::table
        .filter(users::external_id.eq("ada"))
        .select((users::username, users::email))
        .first(&mut conn)
        .await
        .expect("ada");
    assert_eq!(stored, (Some("Ada".into()), Some("ada@example.com".into())));

    let status = app
        .ingest()
        .upsert_users(UpsertUsersRequest {
            users: vec![user("x", "", "nope")],
        })
        .await
        .expect_err("bad email");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("users[0]: email"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_streams_events_from_a_file_of_json_messages() {
    let app = TestApp::spawn().await;
    let lines = [
        format!(
            r#"{{"events":[{{"event_id":"{}","event_type":"pageview","user_id":"cli","pageview":{{"page_url":"/docs"}},"data":{{"via":"grpcurl"}}}}]}}"#,
            Uuid::now_v7()
        ),
        format!(
            r#"{{"events":[{{"event_id":"{}","event_type":"purchase","user_id":"cli","purchase":{{"product_id":"sku-1","quantity":1,"amount":"9.90"}}}},{{"event_id":"{}","event_type":"click"}}]}}"#,
            Uuid::now_v7(),
            Uuid::now_v7()
        ),
    ];
    let dir = std::env::temp_dir().join(format!("pulse-grpcurl-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let output = std::process::Command::new(crate::helpers::grpcurl())
        .args([
            "-plaintext",
            "-d",
            "@",
            &app.grpc_addr.to_string(),
            "pulse.v1.IngestService/IngestEvents",
        ])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("grpcurl runs");
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let response: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(response["accepted"], "3", "{response}");
    assert_eq!(count(&app.db, "events").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_ingest_outcomes() {
    let app = TestApp::spawn().await;
    let id = Uuid::now_v7();
    let events = vec![
        click(id, "u"),
        click(id, "u"),
        Event {
            event_type: "BAD".into(),
            ..click(Uuid::now_v7(), "u")
        },
    ];
    ingest(&app, vec![message(events)]).await.expect("ok");
    let (_, body) = app.http_get("/metrics").await;
    for series in [
        r#"pulse_ingest_events_total{outcome="accepted"} 1"#,
        r#"pulse_ingest_events_total{outcome="duplicate"} 1"#,
        r#"pulse_ingest_events_total{outcome="rejected_event_type"} 1"#,
        "pulse_ingest_batch_write_duration_seconds_count 1",
        "pulse_ingest_streams_in_flight 0",
    ] {
        assert!(body.contains(series), "missing `{series}` in\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_an_open_stream_finish_and_refuses_new_calls() {
    let mut app = TestApp::spawn().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<IngestEventsRequest>(4);
    let mut client = app.ingest();
    let call = tokio::spawn(async move {
        client
            .ingest_events(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(message(vec![click(Uuid::now_v7(), "u")]))
        .await
        .expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&app.db, "events").await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    app.begin_shutdown();
    // The open stream goes on and is answered in full.
    tx.send(message(vec![
        click(Uuid::now_v7(), "u"),
        click(Uuid::now_v7(), "u"),
    ]))
    .await
    .expect("send");
    drop(tx);
    let response = call
        .await
        .expect("joined")
        .expect("the in-flight stream completes")
        .into_inner();
    assert_eq!(response.accepted, 3);
    app.wait_stopped()
        .await
        .expect("the server returns cleanly");
    assert_eq!(count(&app.db, "events").await, 3);

    // Nothing listens any more.
    let refused = tokio::net::TcpStream::connect(app.grpc_addr).await;
    assert!(refused.is_err(), "the gRPC port still accepts connections");
}

/// `--ingest-memory-bytes` bounds what all streams hold together by making
/// them wait, never by refusing: with a budget smaller than one message,
/// concurrent streams of such messages still all land, counted exactly.
#[tokio::test(flavor = "multi_thread")]
async fn streams_over_the_ingest_memory_budget_wait_and_all_land() {
    let app = TestApp::spawn_with(|s| s.limits.ingest_memory_bytes = 64 * 1024).await;
    let mut data = prost_types::Struct::default();
    data.fields.insert(
        "blob".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("x".repeat(4000))),
        },
    );
    // 4 streams × 3 messages × 50 events of ~4 KB: each message ~200 KB,
    // three times the budget.
    let streams = (0..4).map(|s| {
        let messages: Vec<_> = (0..3)
            .map(|_| {
                message(
                    (0..50)
                        .map(|_| Event {
                            data: Some(data.clone()),
                            ..click(Uuid::now_v7(), &format!("u{s}"))
                        })
                        .collect(),
                )
            })
            .collect();
        ingest(&app, messages)
    });
    let answers = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        futures::future::join_all(streams),
    )
    .await
    .expect("streams waiting on the budget finish");
    for answer in answers {
        let answer = answer.expect("a stream over the budget is not refused");
        assert_eq!((answer.accepted, answer.rejected), (150, 0));
    }
    assert_eq!(count(&app.db, "events").await, 600);
}
