//! Ingest and reads never share fate: a flood of slow queries from one
//! query key fills neither the ingest pool nor more than its share of the
//! query pool; queries past their budget are cancelled and refused with
//! RESOURCE_EXHAUSTED instead of holding connections; ingest keeps working
//! at low latency and health stays SERVING.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use pulse::domain::key::Scope;
use pulse::grpc::convert::to_timestamp;
use pulse::grpc::proto::query_service_client::QueryServiceClient;
use pulse::grpc::proto::*;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase, http_get_with};
use crate::ingest::{click, message};

const QUERY_BUDGET: Duration = Duration::from_millis(300);

fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ASCII key"),
    );
    request
}

fn events_last_hour() -> GetMetricsRequest {
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

#[derive(Debug, Default)]
struct Outcomes {
    ok: usize,
    over_budget: usize,
    too_many: usize,
    other: Vec<String>,
    slowest: Duration,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_slow_queries_from_one_key_never_starves_ingest() {
    let db = TestDatabase::migrated().await;
    let (_, query_key) = db.create_key(Scope::Query).await;
    let (_, ingest_key) = db.create_key(Scope::Ingest).await;
    let app = TestApp::spawn_on(db, |s| {
        s.database.pool_size = 2;
        s.database.query_pool_size = 3;
        s.database.background_pool_size = 2;
        s.database.pool_timeout = Duration::from_millis(500);
        s.database.query_timeout = QUERY_BUDGET;
        s.quotas.max_concurrent_queries = 2;
        // The rate is not what is tested: 32 threads at full speed.
        s.quotas.queries_per_second = 0;
    })
    .await;
    // Ingest something first, so there is a minute to read.
    app.ingest()
        .ingest_events(keyed(
            tokio_stream::iter(vec![message(vec![click(Uuid::new_v4(), "u")])]),
            &ingest_key,
        ))
        .await
        .expect("ingest");

    // Every GetMetrics now blocks on the rollups it reads, as a slow plan
    // would: it holds its connection until something ends it.
    let mut locker = app.db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE rollup_counts IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the rollups");

    let flood_until = Instant::now() + Duration::from_secs(3);
    let flood: Vec<_> = (0..32)
        .map(|_| {
            let channel = app.channel.clone();
            let key = query_key.clone();
            tokio::spawn(async move {
                let mut outcomes = Outcomes::default();
                while Instant::now() < flood_until {
                    let started = Instant::now();
                    let result = QueryServiceClient::new(channel.clone())
                        .get_metrics(keyed(events_last_hour(), &key))
                        .await;
                    outcomes.slowest = outcomes.slowest.max(started.elapsed());
                    match result {
                        Ok(_) => outcomes.ok += 1,
                        Err(s) if s.code() == Code::ResourceExhausted => {
                            if s.message().contains("PULSE_DB_QUERY_TIMEOUT") {
                                outcomes.over_budget += 1;
                            } else if s.message().contains("PULSE_KEY_MAX_CONCURRENT_QUERIES") {
                                assert!(s.metadata().get("retry-after-ms").is_some());
                                outcomes.too_many += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            } else {
                                outcomes.other.push(format!("{s:?}"));
                            }
                        }
                        Err(s) => outcomes.other.push(format!("{s:?}")),
                    }
                }
                outcomes
            })
        })
        .collect();

    // Meanwhile: ingest, one call after another, each timed; and health.
    let mut latencies = Vec::new();
    tokio::time::sleep(Duration::from_millis(200)).await;
    while Instant::now() < flood_until {
        let started = Instant::now();
        let response = app
            .ingest()
            .ingest_events(keyed(
                tokio_stream::iter(vec![message(
                    (0..20).map(|_| click(Uuid::new_v4(), "u")).collect(),
                )]),
                &ingest_key,
            ))
            .await
            .expect("ingest never waits for the query flood")
            .into_inner();
        latencies.push(started.elapsed());
        assert_eq!(response.accepted, 20);
        let health = app
            .health()
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(health.status, ServingStatus::Serving as i32);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The dashboard API of the same key is refused the same way.
    let bearer = format!("Bearer {query_key}");
    let (status, body) = http_get_with(
        app.http_addr,
        "/api/v1/metrics?metric=events&range=1h",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 429, "{body}");

    let mut total = Outcomes::default();
    for task in flood {
        let o = task.await.expect("flood task");
        total.ok += o.ok;
        total.over_budget += o.over_budget;
        total.too_many += o.too_many;
        total.other.extend(o.other);
        total.slowest = total.slowest.max(o.slowest);
    }
    locker.batch_execute("ROLLBACK").await.expect("unlock");

    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    eprintln!(
        "query flood: {} over budget, {} refused at the concurrency cap, {} other, slowest {:?}; \
         ingest: {} calls, p50 {:?}, p99 {:?}",
        total.over_budget,
        total.too_many,
        total.other.len(),
        total.slowest,
        latencies.len(),
        latencies[latencies.len() / 2],
        p99
    );
    assert!(latencies.len() >= 10, "{latencies:?}");
    // Below the 500 ms pool timeout: no ingest call ever waited for a connection.
    assert!(
        p99 < Duration::from_millis(500),
        "ingest p99 {p99:?}: {latencies:?}"
    );
    assert!(total.other.is_empty(), "{:?}", total.other);
    assert_eq!(total.ok, 0, "every query was blocked");
    assert!(total.over_budget >= 2, "{total:?}");
    assert!(total.too_many > 0, "{total:?}");
    // No call held on for seconds: the budget ends it, with some slack.
    assert!(
        total.slowest < QUERY_BUDGET + Duration::from_millis(700),
        "slowest query call {:?}",
        total.slowest
    );
    let (_, text) = http_get_with(app.http_addr, "/metrics", &[]).await;
    let over_budget: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("pulse_queries_over_budget_total ")?
                .parse()
                .ok()
        })
        .expect("pulse_queries_over_budget_total");
    assert!(over_budget >= 2.0, "{text}");

    // Cancelled statements are gone from the server, and queries work again.
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = app.db.connect().await;
    let running: N = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'pulse-query' AND state = 'active'",
    )
    .get_result(&mut conn)
    .await
    .expect("pg_stat_activity");
    assert_eq!(running.n, 0, "a cancelled query still runs");
    QueryServiceClient::new(app.channel.clone())
        .get_metrics(keyed(events_last_hour(), &query_key))
        .await
        .expect("queries work again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dashboard_burst_under_the_concurrency_cap_queues_instead_of_failing() {
    let db = TestDatabase::migrated().await;
    let (_, query_key) = db.create_key(Scope::Query).await;
    // Defaults: 4 queries at a time per key; the page asks for a dozen at once.
    let app = TestApp::spawn_on(db, |_| {}).await;
    let bearer = format!("Bearer {query_key}");
    let paths: [&'static str; 12] = [
        "/api/v1/metrics?metric=events&range=1h&group_by=event_type",
        "/api/v1/metrics?metric=events&range=1h",
        "/api/v1/metrics?metric=pageviews&range=1h",
        "/api/v1/metrics?metric=unique_users&range=1h",
        "/api/v1/metrics?metric=unique_users&range=1h&granularity=total",
        "/api/v1/metrics?metric=revenue&range=1h",
        "/api/v1/metrics?metric=purchases&range=1h",
        "/api/v1/metrics?metric=pageviews&range=1h&group_by=page_url&granularity=total",
        "/api/v1/metrics?metric=revenue&range=1h&group_by=product_id&granularity=total",
        "/api/v1/alerts/rules",
        "/api/v1/alerts/notifications?limit=30",
        "/api/v1/metrics?metric=quantity&range=15m",
    ];
    let requests: Vec<_> = paths
        .iter()
        .copied()
        .map(|path: &'static str| {
            let bearer = bearer.clone();
            let addr = app.http_addr;
            tokio::spawn(
                async move { http_get_with(addr, path, &[("Authorization", &bearer)]).await },
            )
        })
        .collect();
    for (request, path) in requests.into_iter().zip(paths) {
        let (status, body) = request.await.expect("request task");
        assert_eq!(status, 200, "{path}: {body}");
    }
}
