//! Maintenance jobs and scale-out: retention under live ingest, one job
//! run at a time across instances, and two instances serving as one.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use pulse::domain::metric::floor_to;
use pulse::grpc::convert::to_timestamp;
use pulse::grpc::proto::*;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase};
use crate::ingest::{click, ingest, message, pageview, purchase};

/// The longest any bounded wait here lasts.
const WAIT: Duration = Duration::from_secs(30);

/// Another handle on `db` for a second server: dropping it leaves the
/// database alone (its name names no database), so only the original drops
/// it (the approach of tests/api/alerts.rs).
fn alias(db: &TestDatabase) -> TestDatabase {
    TestDatabase {
        name: format!("{}_alias", db.name),
        url: db.url.clone(),
    }
}

fn stamped(mut e: Event, t: DateTime<Utc>) -> Event {
    e.timestamp = Some(to_timestamp(t));
    e
}

/// A mix of clicks, pageviews and purchases, one per second from `from`.
fn traffic(from: DateTime<Utc>, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let user = format!("u{}", i % 50);
            let id = Uuid::now_v7();
            let event = match i % 3 {
                0 => pageview(id, &user, &format!("/p{}", i % 5)),
                1 => purchase(id, &user, &format!("sku-{}", i % 4), 1, "1.50"),
                _ => click(id, &user),
            };
            stamped(event, from + TimeDelta::seconds(i as i64))
        })
        .collect()
}

async fn send(app: &TestApp, events: Vec<Event>) {
    let n = events.len() as u64;
    let messages = events.chunks(500).map(|c| message(c.to_vec())).collect();
    let response = ingest(app, messages).await.expect("ingest");
    assert_eq!(response.accepted, n, "{response:?}");
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Runs a `SELECT count(*) AS n …` written by the test.
async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .await
        .expect("count")
        .n
}

async fn raw_counts(conn: &mut AsyncPgConnection, cutoff: DateTime<Utc>) -> [i64; 4] {
    let before = |table: &str| {
        format!(
            "SELECT count(*) AS n FROM {table} WHERE \"timestamp\" < '{}'",
            cutoff.to_rfc3339()
        )
    };
    [
        count(conn, &before("events")).await,
        count(conn, &before("pageview_details")).await,
        count(conn, &before("purchase_details")).await,
        count(conn, "SELECT count(*) AS n FROM events").await,
    ]
}

fn request(
    metric: Metric,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    granularity: Granularity,
    group_by: Dimension,
) -> GetMetricsRequest {
    GetMetricsRequest {
        metric: metric as i32,
        start: Some(to_timestamp(start)),
        end: Some(to_timestamp(end)),
        granularity: granularity as i32,
        filter: None,
        group_by: group_by as i32,
        limit: 0,
    }
}

async fn get(app: &TestApp, request: GetMetricsRequest) -> GetMetricsResponse {
    app.query()
        .get_metrics(request)
        .await
        .expect("GetMetrics")
        .into_inner()
}

/// The value of one series line of `/metrics` (`name{labels}`), if present.
async fn metric(app: &TestApp, series: &str) -> Option<f64> {
    let (_, body) = app.http_get("/metrics").await;
    body.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_exactly_the_old_raw_rows_keeps_rollup_answers_and_never_blocks_ingest() {
    let now = Utc::now();
    let old_day = floor_to(now - TimeDelta::days(40), 86400);
    let old_start = old_day + TimeDelta::hours(10);
    let cutoff_now = now - TimeDelta::days(30);
    let writer = TestApp::spawn().await;

    // 1,500 old events over 25 minutes, 30 in the minutes just before the
    // cutoff (also deleted), and 300 just after it and later (kept).
    send(&writer, traffic(old_start, 1500)).await;
    send(&writer, traffic(cutoff_now - TimeDelta::minutes(3), 30)).await;
    send(&writer, traffic(cutoff_now + TimeDelta::minutes(10), 150)).await;
    send(&writer, traffic(now - TimeDelta::days(2), 150)).await;
    {
        let mut conn = writer.db.connect().await;
        pulse::db::rollups::fold(&mut conn).await.expect("fold");
    }
    let day = old_day + TimeDelta::days(1);
    let rollup_served = [
        request(
            Metric::Events,
            old_day,
            day,
            Granularity::Hour,
            Dimension::EventType,
        ),
        request(
            Metric::Pageviews,
            old_start,
            old_start + TimeDelta::hours(1),
            Granularity::Minute,
            Dimension::PageUrl,
        ),
        // Minutes of pages older than the minute horizon come from raw
        // events, then from what retention moved out of them.
        request(
            Metric::UniqueUsers,
            old_start,
            old_start + TimeDelta::hours(1),
            Granularity::Minute,
            Dimension::PageUrl,
        ),
        request(
            Metric::Revenue,
            old_start,
            old_start + TimeDelta::hours(1),
            Granularity::Minute,
            Dimension::ProductId,
        ),
        request(
            Metric::Revenue,
            old_day,
            day,
            Granularity::Total,
            Dimension::ProductId,
        ),
        request(
            Metric::UniqueUsers,
            old_day,
            day,
            Granularity::Day,
            Dimension::Unspecified,
        ),
    ];
    let mut before = Vec::new();
    for r in &rollup_served {
        let response = get(&writer, r.clone()).await;
        assert!(!response.series.is_empty(), "{r:?}");
        before.push(response);
    }
    // A range with sub-minute edges reads raw events at its edges.
    let ragged = request(
        Metric::Events,
        old_start + TimeDelta::seconds(30),
        old_start + TimeDelta::minutes(5),
        Granularity::Total,
        Dimension::Unspecified,
    );
    assert_eq!(get(&writer, ragged.clone()).await.series[0].total, 270.0);

    // Live ingest on one instance while another deletes, 100 events per
    // transaction.
    let live: Vec<Event> = (0..10_000).map(|_| click(Uuid::now_v7(), "live")).collect();
    let stream = {
        let app_channel = writer.ingest();
        let messages: Vec<_> = live.chunks(500).map(|c| message(c.to_vec())).collect();
        tokio::spawn(async move {
            let mut client = app_channel;
            client
                .ingest_events(tokio_stream::iter(messages))
                .await
                .map(tonic::Response::into_inner)
        })
    };
    let janitor = TestApp::spawn_on(alias(&writer.db), |s| {
        s.maintenance.retention_days = 30;
        s.maintenance.retention_interval = Duration::from_millis(20);
        s.maintenance.retention_batch = 100;
        s.maintenance.vacuum_interval = Duration::from_millis(50);
    })
    .await;

    let mut conn = writer.db.connect().await;
    let cutoff = floor_to(cutoff_now, 60);
    wait_until("retention deletes the old rows", async || {
        raw_counts(&mut conn, cutoff).await[0] == 0
    })
    .await;
    let response = stream.await.expect("ingest task").expect("live ingest");
    assert_eq!(response.accepted, 10_000);
    assert_eq!(response.duplicates, 0);

    let [old_events, old_pageviews, old_purchases, all_events] =
        raw_counts(&mut conn, cutoff).await;
    assert_eq!((old_events, old_pageviews, old_purchases), (0, 0, 0));
    assert_eq!(
        all_events,
        300 + 10_000,
        "everything newer than the cutoff is kept"
    );
    // The details went with their events, and only those.
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM pageviews").await,
        100
    );
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM purchases").await,
        100
    );

    // Rollups outlive raw events: whole-minute answers are unchanged,
    // through either instance.
    for (r, expected) in rollup_served.iter().zip(&before) {
        assert_eq!(&get(&writer, r.clone()).await, expected, "{r:?}");
        assert_eq!(&get(&janitor, r.clone()).await, expected, "{r:?}");
    }
    // As documented: sub-minute edges of old ranges are partial (only the
    // whole minutes 10:01–10:05 remain).
    assert_eq!(get(&writer, ragged).await.series[0].total, 240.0);

    wait_until("the runs show in /metrics", async || {
        metric(
            &janitor,
            r#"pulse_job_runs_total{job="vacuum",outcome="ok"}"#,
        )
        .await
        .is_some()
    })
    .await;
    assert_eq!(
        metric(
            &janitor,
            r#"pulse_retention_deleted_rows_total{table="events"}"#
        )
        .await,
        Some(1530.0)
    );
    assert_eq!(
        metric(
            &janitor,
            r#"pulse_retention_deleted_rows_total{table="pageviews"}"#
        )
        .await,
        Some(510.0)
    );
    assert_eq!(
        metric(
            &janitor,
            r#"pulse_retention_deleted_rows_total{table="purchases"}"#
        )
        .await,
        Some(510.0)
    );
    assert!(
        metric(
            &janitor,
            r#"pulse_job_runs_total{job="retention",outcome="ok"}"#
        )
        .await
        .unwrap_or(0.0)
            >= 1.0
    );
    let last = metric(
        &janitor,
        r#"pulse_job_last_success_timestamp_seconds{job="retention"}"#,
    )
    .await
    .expect("last success of retention");
    assert!(last >= now.timestamp() as f64);
    // An instance with retention refuses events older than it: their ids
    // may have been deleted, so a resend could not be deduplicated.
    let resend = traffic(old_start, 2);
    let response = ingest(&janitor, vec![message(resend)])
        .await
        .expect("ingest");
    assert_eq!((response.accepted, response.rejected), (0, 2));
    assert!(
        response.errors[0].reason.contains("retention"),
        "{response:?}"
    );
    // The writer's jobs are off: nothing ran there.
    assert_eq!(
        metric(
            &writer,
            r#"pulse_job_runs_total{job="retention",outcome="ok"}"#
        )
        .await,
        None
    );
    drop(janitor);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_runs_on_one_instance_at_a_time() {
    let db = TestDatabase::migrated().await;
    // Another instance (this session) holds the retention lock.
    let mut other = db.connect().await;
    other
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({})",
            pulse::db::maintenance::RETENTION_LOCK
        ))
        .await
        .expect("take the retention lock");
    // Events an instance with retention would refuse (older than its
    // retention) come through one without.
    let writer = TestApp::spawn_on(alias(&db), |_| {}).await;
    send(&writer, traffic(Utc::now() - TimeDelta::days(31), 10)).await;
    let app = TestApp::spawn_on(db, |s| {
        s.maintenance.retention_days = 30;
        s.maintenance.retention_interval = Duration::from_millis(20);
    })
    .await;
    wait_until("runs are skipped", async || {
        metric(
            &app,
            r#"pulse_job_runs_total{job="retention",outcome="skipped"}"#,
        )
        .await
        .unwrap_or(0.0)
            >= 3.0
    })
    .await;
    let mut conn = app.db.connect().await;
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM events").await,
        10
    );
    assert_eq!(
        metric(
            &app,
            r#"pulse_job_runs_total{job="retention",outcome="ok"}"#
        )
        .await,
        None
    );
    // The other instance goes away: this one takes the job over.
    drop(other);
    wait_until("retention runs here", async || {
        count(&mut conn, "SELECT count(*) AS n FROM events").await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_ingest_on_one_query_and_watch_alerts_on_the_other() {
    let db = TestDatabase::migrated().await;
    let fast = |s: &mut pulse::config::ServeSettings| {
        s.alert_interval = Duration::from_millis(50);
    };
    let front = TestApp::spawn_on(alias(&db), fast).await;
    let back = TestApp::spawn_on(alias(&db), fast).await;

    let rule = back
        .alerts()
        .create_alert_rule(CreateAlertRuleRequest {
            rule: Some(AlertRule {
                id: String::new(),
                name: "any purchase".into(),
                metric: Metric::Purchases as i32,
                filter: None,
                window_seconds: 300,
                comparison: Comparison::GreaterThan as i32,
                threshold: 0.0,
                for_seconds: 0,
                enabled: true,
            }),
        })
        .await
        .expect("CreateAlertRule")
        .into_inner()
        .rule
        .expect("a rule");
    let mut watch = back
        .alerts()
        .watch_alerts(WatchAlertsRequest {
            rule_ids: vec![rule.id.clone()],
            after_id: 0,
        })
        .await
        .expect("WatchAlerts")
        .into_inner();

    // Ingest on one instance (timestamps default to now)…
    let events = vec![
        purchase(Uuid::now_v7(), "ann", "sku-1", 2, "10.00"),
        purchase(Uuid::now_v7(), "bob", "sku-2", 1, "2.50"),
        click(Uuid::now_v7(), "ann"),
    ];
    let response = ingest(&front, vec![message(events)]).await.expect("ingest");
    assert_eq!(response.accepted, 3);

    // …the other counts it at once…
    let now = Utc::now();
    let answer = get(
        &back,
        request(
            Metric::Revenue,
            now - TimeDelta::hours(1),
            now + TimeDelta::hours(1),
            Granularity::Total,
            Dimension::Unspecified,
        ),
    )
    .await;
    assert_eq!(answer.series[0].total, 12.5);
    let answer = get(
        &back,
        request(
            Metric::Events,
            now - TimeDelta::hours(1),
            now + TimeDelta::hours(1),
            Granularity::Total,
            Dimension::Unspecified,
        ),
    )
    .await;
    assert_eq!(answer.series[0].total, 3.0);

    // …and its subscriber is told, whichever instance evaluates.
    let fired = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("a notification in time")
        .expect("no stream error")
        .expect("the stream is open");
    assert_eq!(fired.rule_id, rule.id);
    assert_eq!(fired.state(), AlertState::Firing);
    assert_eq!(fired.value, 2.0);
    drop((front, back));
}
