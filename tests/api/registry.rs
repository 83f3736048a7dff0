//! The event-type registry cannot be exhausted: a cap on distinct types
//! (`--max-event-types`), per-event rejection past it with the rest of the
//! batch stored, and ids that no race or retry can burn (the id is a
//! smallint: 32,767 values at most).

use std::collections::HashSet;

use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use pulse::grpc::proto::*;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase};
use crate::ingest::{click, count, message};

fn typed(event_type: &str) -> Event {
    Event {
        event_type: event_type.into(),
        ..click(Uuid::new_v4(), "u")
    }
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Ids {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    lowest: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    highest: i32,
}

async fn type_ids(db: &TestDatabase) -> Ids {
    let mut conn = db.connect().await;
    diesel::sql_query(
        "SELECT count(*) AS n, min(event_type_id)::int AS lowest, max(event_type_id)::int AS highest FROM event_types",
    )
    .get_result(&mut conn)
    .await
    .expect("event_types")
}

/// Sends `messages` as one stream.
async fn stream(
    app: &TestApp,
    messages: Vec<IngestEventsRequest>,
) -> Result<IngestEventsResponse, tonic::Status> {
    app.ingest()
        .ingest_events(tokio_stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_three_thousand_new_types_fill_the_registry_and_are_then_refused_per_event() {
    // The cap at its largest: every smallint id can be used, none burnt.
    let app = TestApp::spawn_with(|s| {
        s.limits.max_event_types = 32_767;
        s.limits.max_errors_reported = 100_000;
    })
    .await;
    let preset = type_ids(&app.db).await.n as usize; // pageview, click, purchase, sign_up
    let names: Vec<String> = (0..33_000).map(|i| format!("t{i:05}")).collect();
    // Four concurrent streams, each message mixing new types with known
    // ones, so races and partial admission both happen.
    let streams: Vec<_> = names
        .chunks(8_250)
        .map(|chunk| {
            let messages: Vec<IngestEventsRequest> = chunk
                .chunks(750)
                .map(|names| {
                    let mut events: Vec<Event> = names.iter().map(|n| typed(n)).collect();
                    events.push(typed("click"));
                    events.push(typed("sign_up"));
                    message(events)
                })
                .collect();
            let channel = app.channel.clone();
            tokio::spawn(async move {
                pulse::grpc::proto::ingest_service_client::IngestServiceClient::new(channel)
                    .ingest_events(tokio_stream::iter(messages))
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    let mut accepted = 0;
    let mut rejected = 0;
    let mut refused_types = HashSet::new();
    for task in streams {
        let response = task
            .await
            .expect("task")
            .expect("a full registry never fails a stream");
        accepted += response.accepted;
        rejected += response.rejected;
        for error in &response.errors {
            assert!(
                error.reason.contains("PULSE_MAX_EVENT_TYPES"),
                "{}",
                error.reason
            );
            refused_types.insert(
                error
                    .reason
                    .split('`')
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        assert_eq!(response.errors.len() as u64, response.rejected);
    }
    let room = 32_767 - preset;
    assert_eq!(rejected as usize, 33_000 - room, "new types past the cap");
    let known_events = 2 * 44; // two known-type events per message, 44 messages
    assert_eq!(accepted as usize, room + known_events);
    assert_eq!(refused_types.len(), 33_000 - room);
    assert_eq!(count(&app.db, "events").await as u64, accepted);
    // Every id used, none burnt: 1..=32767, dense.
    assert_eq!(
        type_ids(&app.db).await,
        Ids {
            n: 32_767,
            lowest: 1,
            highest: 32_767
        }
    );

    // Later batches: known types (old and newly registered) still work, and
    // a new type is refused alone.
    let admitted = names
        .iter()
        .find(|n| !refused_types.contains(*n))
        .expect("an admitted type")
        .clone();
    let refused = refused_types.iter().next().expect("a refused type").clone();
    let response = stream(
        &app,
        vec![message(vec![
            typed("pageview_without_detail_is_not_pageview"),
            typed(&admitted),
            typed(&refused),
            typed("click"),
        ])],
    )
    .await
    .expect("OK");
    assert_eq!(response.accepted, 2, "{response:?}");
    assert_eq!(response.rejected, 2, "{response:?}");
    let indexes: Vec<u64> = response.errors.iter().map(|e| e.index).collect();
    assert_eq!(indexes, [0, 2]);
    assert!(
        response.errors[0].reason.contains("limit of 32767"),
        "{response:?}"
    );
    // The rejections are visible in /metrics by class.
    let (_, text) = app.http_get("/metrics").await;
    assert!(
        text.contains("pulse_ingest_events_total{outcome=\"rejected_event_type_limit\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_streams_never_pass_the_cap_together() {
    let app = TestApp::spawn_with(|s| s.limits.max_event_types = 50).await;
    // Eight streams race to register the same 100 new names.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let channel = app.channel.clone();
            let events: Vec<Event> = (0..100).map(|i| typed(&format!("race_{i:03}"))).collect();
            tokio::spawn(async move {
                pulse::grpc::proto::ingest_service_client::IngestServiceClient::new(channel)
                    .ingest_events(tokio_stream::iter(vec![message(events)]))
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        let response = task.await.expect("task").expect("OK");
        assert_eq!(response.accepted + response.rejected, 100);
        accepted += response.accepted;
    }
    // 4 preset types + 46 new ones, the same 46 for every stream.
    assert_eq!(
        type_ids(&app.db).await,
        Ids {
            n: 50,
            lowest: 1,
            highest: 50
        }
    );
    assert_eq!(accepted, 8 * 46);
}
