//! Abuse limits: per-key queries/s and events/s with a retry hint, the
//! bound on concurrent IngestEvents streams per key, and client deadlines
//! answered with DEADLINE_EXCEEDED.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures::StreamExt;
use pulse::domain::key::Scope;
use pulse::grpc::convert::to_timestamp;
use pulse::grpc::proto::*;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase, http_get_with};
use crate::ingest::click;

fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ASCII key"),
    );
    request
}

fn metrics_request() -> GetMetricsRequest {
    let end = Utc::now();
    GetMetricsRequest {
        metric: Metric::Events as i32,
        start: Some(to_timestamp(end - TimeDelta::hours(1))),
        end: Some(to_timestamp(end)),
        granularity: Granularity::Total as i32,
        filter: None,
        group_by: Dimension::Unspecified as i32,
        limit: 0,
    }
}

fn batch(n: usize) -> IngestEventsRequest {
    IngestEventsRequest {
        events: (0..n).map(|_| click(Uuid::new_v4(), "u")).collect(),
        sent_at: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_over_the_key_rate_are_refused_with_a_retry_hint() {
    let db = TestDatabase::migrated().await;
    let (_, key) = db.create_key(Scope::Query).await;
    let (_, other) = db.create_key(Scope::Query).await;
    let app = TestApp::spawn_on(db, |s| s.quotas.queries_per_second = 3).await;

    let mut refused = None;
    for _ in 0..20 {
        match app
            .query()
            .get_metrics(keyed(metrics_request(), &key))
            .await
        {
            Ok(_) => {}
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("a key at 3 queries/s is refused within 20 quick calls");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("retry after"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(&key));
    let retry_ms: u64 = status
        .metadata()
        .get("retry-after-ms")
        .expect("retry-after-ms metadata")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number");
    assert!(status.metadata().get("retry-after").is_some());

    // The dashboard API shares the key's budget: 429 with Retry-After.
    let bearer = format!("Bearer {key}");
    let (code, body) = http_get_with(
        app.http_addr,
        "/api/v1/metrics?metric=events&range=1h",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("RESOURCE_EXHAUSTED"), "{body}");

    // Another key has its own budget; the refused one passes after the hint.
    app.query()
        .get_metrics(keyed(metrics_request(), &other))
        .await
        .expect("another key is not limited by this one");
    tokio::time::sleep(Duration::from_millis(retry_ms + 50)).await;
    app.query()
        .get_metrics(keyed(metrics_request(), &key))
        .await
        .expect("after the retry hint the key passes again");
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_over_the_key_rate_fails_the_stream_with_a_retry_hint() {
    let db = TestDatabase::migrated().await;
    let (_, key) = db.create_key(Scope::Ingest).await;
    let (_, other) = db.create_key(Scope::Ingest).await;
    let app = TestApp::spawn_on(db, |s| s.quotas.events_per_second = 10).await;

    // 25 events pass (the budget goes into debt), the next message is refused.
    let status = app
        .ingest()
        .ingest_events(keyed(tokio_stream::iter(vec![batch(25), batch(1)]), &key))
        .await
        .expect_err("over 10 events/s");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("events/s"),
        "{}",
        status.message()
    );
    let retry_ms: u64 = status
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after-ms");
    assert!(
        retry_ms >= 1000,
        "25 events at 10/s leave a 1.5 s debt: {retry_ms}"
    );

    let response = app
        .ingest()
        .ingest_events(keyed(tokio_stream::iter(vec![batch(5)]), &other))
        .await
        .expect("another key has its own budget")
        .into_inner();
    assert_eq!(response.accepted, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_streams_per_key_are_bounded() {
    let db = TestDatabase::migrated().await;
    let (_, key) = db.create_key(Scope::Ingest).await;
    let app = TestApp::spawn_on(db, |s| s.quotas.max_ingest_streams = 1).await;

    // One stream held open by the client.
    let (tx, rx) = tokio::sync::mpsc::channel::<IngestEventsRequest>(1);
    let mut client = app.ingest();
    let held_key = key.clone();
    let held = tokio::spawn(async move {
        client
            .ingest_events(keyed(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &held_key,
            ))
            .await
    });
    tx.send(batch(1)).await.expect("the stream is open");
    // Its first event committed: the server holds the stream's slot.
    let started = Instant::now();
    while crate::ingest::count(&app.db, "events").await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the held stream's event was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = app
        .ingest()
        .ingest_events(keyed(tokio_stream::iter(vec![batch(1)]), &key))
        .await
        .expect_err("a second stream of the key is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("streams"), "{}", status.message());

    drop(tx);
    let first = held
        .await
        .expect("no panic")
        .expect("the held stream ends OK");
    assert_eq!(first.into_inner().accepted, 1);
    let again = app
        .ingest()
        .ingest_events(keyed(tokio_stream::iter(vec![batch(1)]), &key))
        .await
        .expect("the slot is free again");
    assert_eq!(again.into_inner().accepted, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passed_deadline_ends_the_call_with_deadline_exceeded() {
    let app = TestApp::spawn().await;
    // A stream that sends one message, then never ends.
    let endless = tokio_stream::iter(vec![batch(1)]).chain(futures::stream::pending());
    let mut request = tonic::Request::new(endless);
    request.set_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let status = app
        .ingest()
        .ingest_events(request)
        .await
        .expect_err("the deadline passes");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The server recorded it as such.
    let (_, metrics) = app.http_get("/metrics").await;
    assert!(
        metrics
            .contains(r#"method="/pulse.v1.IngestService/IngestEvents",code="DeadlineExceeded""#),
        "{metrics}"
    );
}
