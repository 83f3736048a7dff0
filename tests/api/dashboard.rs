//! The HTTP side: the dashboard's JSON API against GetMetrics, the page in
//! headless Chromium, `/metrics` scraped by a real Prometheus, the client
//! examples (grpcurl script, Python client) and `pulse demo`.
//!
//! The tests that drive an outside program (node + Chromium, Prometheus,
//! python3 + grpcio, grpcurl) fail with the install command when it is
//! missing: `scripts/setup` installs them all.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use pulse::domain::metric::floor_to;
use pulse::grpc::convert::to_timestamp;
use pulse::grpc::proto::*;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase, grpcurl, http_get};
use crate::ingest::{click, ingest, message, pageview, purchase};

/// The longest any bounded wait here lasts.
const WAIT: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Fails with the way to install `what` unless `probe` runs successfully.
fn require(what: &str, probe: &mut Command) {
    let ok = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{what} is missing: {}", crate::helpers::INSTALL_HINT);
}

/// A mix of events a few minutes ago: 3 users; pageviews on three pages,
/// purchases of two products, clicks and a sign-up.
async fn seed(app: &TestApp) -> usize {
    let at = Utc::now() - TimeDelta::minutes(3);
    let mut events = Vec::new();
    for (i, (url, n)) in [("/", 6), ("/pricing", 4), ("/docs", 2)].iter().enumerate() {
        for k in 0..*n {
            events.push(pageview(
                Uuid::now_v7(),
                &format!("user-{}", (i + k) % 3),
                url,
            ));
        }
    }
    events.push(purchase(Uuid::now_v7(), "user-0", "sku-1", 2, "19.98"));
    events.push(purchase(Uuid::now_v7(), "user-1", "sku-2", 1, "5.25"));
    events.push(purchase(Uuid::now_v7(), "user-2", "sku-1", 1, "9.99"));
    for k in 0..5 {
        events.push(click(Uuid::now_v7(), &format!("user-{}", k % 3)));
    }
    let mut sign_up = click(Uuid::now_v7(), "user-2");
    sign_up.event_type = "sign_up".into();
    events.push(sign_up);
    let n = events.len();
    for (k, e) in events.iter_mut().enumerate() {
        e.timestamp = Some(to_timestamp(at + TimeDelta::seconds(k as i64)));
    }
    let response = ingest(app, vec![message(events)])
        .await
        .expect("seed events ingest");
    assert_eq!(response.accepted, n as u64, "{response:?}");
    n
}

/// Events `minutes_ago`: `clicks` clicks and `pageviews` pageviews of `/`,
/// at one instant.
async fn seed_at(app: &TestApp, minutes_ago: i64, clicks: usize, pageviews: usize) {
    let at = to_timestamp(Utc::now() - TimeDelta::minutes(minutes_ago));
    let mut events: Vec<Event> = (0..clicks)
        .map(|k| click(Uuid::now_v7(), &format!("old-{k}")))
        .collect();
    events.extend((0..pageviews).map(|k| pageview(Uuid::now_v7(), &format!("old-{k}"), "/")));
    for e in &mut events {
        e.timestamp = Some(at);
    }
    let n = events.len() as u64;
    let response = ingest(app, vec![message(events)]).await.expect("ingest");
    assert_eq!(response.accepted, n, "{response:?}");
}

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let (status, body) = app.http_get(path).await;
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{path} answered {status} with no JSON ({e}): {body}"));
    (status, json)
}

/// A rule on every event over the last 10 minutes that fires at once.
async fn firing_rule(app: &TestApp, name: &str) -> String {
    let rule = app
        .alerts()
        .create_alert_rule(CreateAlertRuleRequest {
            rule: Some(AlertRule {
                name: name.into(),
                metric: Metric::Events as i32,
                window_seconds: 600,
                comparison: Comparison::GreaterThan as i32,
                threshold: 3.0,
                for_seconds: 0,
                enabled: true,
                ..Default::default()
            }),
        })
        .await
        .expect("create rule")
        .into_inner()
        .rule
        .expect("a rule");
    rule.id
}

/// Waits (bounded) until the JSON API lists a FIRING notification.
async fn wait_for_firing(app: &TestApp) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, json) = get_json(app, "/api/v1/alerts/notifications?after_id=0").await;
        if let Some(n) = json["notifications"]
            .as_array()
            .and_then(|list| list.iter().find(|n| n["state"] == "firing"))
        {
            return n.clone();
        }
        assert!(Instant::now() < deadline, "no firing notification: {json}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn json_metrics_are_get_metrics() {
    let app = TestApp::spawn().await;
    seed(&app).await;
    let end = floor_to(Utc::now(), 60) + TimeDelta::minutes(1);
    let start = end - TimeDelta::minutes(30);
    for (metric, group_by, granularity) in [
        (Metric::Events, Dimension::EventType, Granularity::Minute),
        (
            Metric::UniqueUsers,
            Dimension::Unspecified,
            Granularity::Total,
        ),
        (Metric::Revenue, Dimension::ProductId, Granularity::Total),
        (Metric::Pageviews, Dimension::PageUrl, Granularity::Minute),
    ] {
        let grpc = app
            .query()
            .get_metrics(GetMetricsRequest {
                metric: metric as i32,
                start: Some(to_timestamp(start)),
                end: Some(to_timestamp(end)),
                granularity: granularity as i32,
                group_by: group_by as i32,
                ..Default::default()
            })
            .await
            .expect("GetMetrics")
            .into_inner();
        let name = |s: &str, prefix: &str| s.strip_prefix(prefix).unwrap().to_ascii_lowercase();
        let path = format!(
            "/api/v1/metrics?metric={}&start={}&end={}&granularity={}&group_by={}",
            name(metric.as_str_name(), "METRIC_"),
            rfc3339(start),
            rfc3339(end),
            name(granularity.as_str_name(), "GRANULARITY_"),
            name(group_by.as_str_name(), "DIMENSION_"),
        );
        let (status, json) = get_json(&app, &path).await;
        assert_eq!(status, 200, "{json}");
        let series = json["series"].as_array().expect("series");
        assert_eq!(series.len(), grpc.series.len(), "{path}: {json}");
        assert!(!grpc.series.is_empty(), "{path}: the seed is counted");
        for (http, grpc) in series.iter().zip(&grpc.series) {
            assert_eq!(http["group"], grpc.group.as_str(), "{path}");
            assert_eq!(http["total"].as_f64(), Some(grpc.total), "{path}");
            let values: Vec<f64> = http["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let expected: Vec<f64> = grpc.points.iter().map(|p| p.value).collect();
            assert_eq!(values, expected, "{path}");
        }
        let buckets = json["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), grpc.series[0].points.len(), "{path}");
        assert_eq!(buckets[0], rfc3339(start).as_str(), "{path}");
    }
    // A named range ends at the next minute boundary, in minute buckets.
    let (status, json) = get_json(&app, "/api/v1/metrics?metric=events&range=15m").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["granularity"], "minute");
    assert_eq!(json["buckets"].as_array().unwrap().len(), 15);
    let end: DateTime<Utc> = json["end"].as_str().unwrap().parse().unwrap();
    assert_eq!(end, floor_to(end, 60), "end is minute-aligned: {json}");
    assert!(end > Utc::now() - TimeDelta::seconds(5), "{json}");
    let (_, week) = get_json(&app, "/api/v1/metrics?metric=revenue&range=7d").await;
    assert_eq!(week["granularity"], "hour", "{week}");
    assert_eq!(week["series"][0]["total"].as_f64(), Some(35.22), "{week}");
}

#[tokio::test]
async fn json_errors_carry_the_http_status_of_the_error_policy() {
    let app = TestApp::spawn().await;
    for (path, status, code) in [
        ("/api/v1/metrics", 400, "INVALID_ARGUMENT"),
        ("/api/v1/metrics?metric=clicks", 400, "INVALID_ARGUMENT"),
        (
            "/api/v1/metrics?metric=events&start=2026-01-01T00:00:00Z&end=2026-01-09T00:00:00Z&granularity=minute",
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "/api/v1/metrics?metric=events&start=2026-01-01T00:00:00Z",
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "/api/v1/metrics?metric=events&limit=x",
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "/api/v1/alerts/notifications?limit=0",
            400,
            "INVALID_ARGUMENT",
        ),
        ("/api/v1/nothing", 404, "NOT_FOUND"),
    ] {
        let (got, json) = get_json(&app, path).await;
        let mut shown = json.to_string();
        shown.truncate(500);
        assert_eq!(got, status, "{path}: {shown}");
        assert_eq!(json["error"]["code"], code, "{path}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}: {json}"
        );
    }
}

#[tokio::test]
async fn json_alert_rules_show_state_and_notifications_page_by_id() {
    let app = TestApp::spawn().await;
    seed(&app).await;
    let id = firing_rule(&app, "busy").await;
    let firing = wait_for_firing(&app).await;
    assert_eq!(firing["rule_id"], id.as_str());
    assert_eq!(firing["rule_name"], "busy");
    let (status, json) = get_json(&app, "/api/v1/alerts/rules").await;
    assert_eq!(status, 200);
    let rule = &json["rules"][0];
    assert_eq!(rule["id"], id.as_str(), "{json}");
    assert_eq!(rule["state"], "firing", "{json}");
    assert_eq!(rule["comparison"], "greater_than", "{json}");
    assert!(rule["value"].as_f64().is_some_and(|v| v > 3.0), "{json}");

    let last = firing["id"].as_i64().unwrap();
    let (_, after) = get_json(
        &app,
        &format!("/api/v1/alerts/notifications?after_id={last}"),
    )
    .await;
    assert_eq!(
        after["notifications"].as_array().unwrap().len(),
        0,
        "{after}"
    );
    assert_eq!(after["last_id"].as_i64(), Some(last), "{after}");
    let (_, latest) = get_json(&app, "/api/v1/alerts/notifications?limit=1").await;
    assert_eq!(
        latest["notifications"][0]["id"].as_i64(),
        Some(last),
        "{latest}"
    );
}

/// GetMetrics over `[start, end)` as the dashboard asks it.
async fn grpc_metrics(
    app: &TestApp,
    metric: Metric,
    start: &str,
    end: &str,
    granularity: Granularity,
    group_by: Dimension,
) -> GetMetricsResponse {
    let time = |t: &str| to_timestamp(t.parse::<DateTime<Utc>>().expect("RFC 3339"));
    app.query()
        .get_metrics(GetMetricsRequest {
            metric: metric as i32,
            start: Some(time(start)),
            end: Some(time(end)),
            granularity: granularity as i32,
            group_by: group_by as i32,
            limit: if group_by == Dimension::Unspecified {
                0
            } else {
                10
            },
            ..Default::default()
        })
        .await
        .expect("GetMetrics")
        .into_inner()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn grpc_values(answer: &GetMetricsResponse) -> Vec<f64> {
    answer
        .series
        .first()
        .map(|s| s.points.iter().map(|p| p.value).collect())
        .unwrap_or_default()
}

fn grpc_total(answer: &GetMetricsResponse) -> f64 {
    answer.series.first().map_or(0.0, |s| s.total)
}

#[tokio::test]
async fn the_combined_dashboard_answer_is_get_metrics() {
    let app = TestApp::spawn().await;
    seed(&app).await;
    // The previous hour: clicks and pageviews, no purchase.
    seed_at(&app, 70, 3, 2).await;
    firing_rule(&app, "busy").await;
    wait_for_firing(&app).await;

    let (status, d) = get_json(&app, "/api/v1/dashboard?range=1h").await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["range"], "1h");
    assert_eq!(d["granularity"], "minute");
    assert_eq!(d["currency"], "USD");
    let (start, end) = (d["start"].as_str().unwrap(), d["end"].as_str().unwrap());
    let buckets = d["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 60, "{d}");
    assert_eq!(buckets[0], start);
    // The current minute is the last bucket and the only partial one.
    assert_eq!(d["partial"], serde_json::json!([59]), "{d}");

    use Dimension as D;
    use Granularity as G;
    // Every series equals GetMetrics over the same range and buckets.
    let by_type = grpc_metrics(&app, Metric::Events, start, end, G::Minute, D::EventType).await;
    let shown = d["series"]["events_by_type"].as_array().unwrap();
    assert_eq!(shown.len(), by_type.series.len(), "{d}");
    for (http, grpc) in shown.iter().zip(&by_type.series) {
        assert_eq!(http["group"], grpc.group.as_str());
        assert_eq!(http["total"].as_f64(), Some(grpc.total));
        let values: Vec<f64> = grpc.points.iter().map(|p| p.value).collect();
        assert_eq!(floats(&http["values"]), values, "{}", grpc.group);
    }
    for (name, metric) in [
        ("events", Metric::Events),
        ("pageviews", Metric::Pageviews),
        ("unique_users", Metric::UniqueUsers),
        ("revenue", Metric::Revenue),
        ("purchases", Metric::Purchases),
    ] {
        let grpc = grpc_metrics(&app, metric, start, end, G::Minute, D::Unspecified).await;
        assert_eq!(
            floats(&d["series"][name]["values"]),
            grpc_values(&grpc),
            "{name}"
        );
        assert_eq!(
            d["series"][name]["total"].as_f64(),
            Some(grpc_total(&grpc)),
            "{name}"
        );
        // The KPI: the range's total (distinct users over the whole range,
        // not a sum of minutes) and the same over the hour before.
        let total = grpc_metrics(&app, metric, start, end, G::Total, D::Unspecified).await;
        let kpi = &d["kpis"][name];
        assert_eq!(
            kpi["value"].as_f64(),
            Some(grpc_total(&total)),
            "{name}: {kpi}"
        );
        let (prev_start, prev_end) = (
            d["previous"]["start"].as_str().unwrap(),
            d["previous"]["end"].as_str().unwrap(),
        );
        assert_eq!(prev_end, start);
        let previous = grpc_total(
            &grpc_metrics(&app, metric, prev_start, prev_end, G::Total, D::Unspecified).await,
        );
        assert_eq!(kpi["previous"].as_f64(), Some(previous), "{name}: {kpi}");
        if previous == 0.0 {
            assert!(
                kpi["change"].is_null(),
                "{name}: no change against nothing: {kpi}"
            );
        } else {
            let change = (grpc_total(&total) - previous) / previous;
            assert_eq!(kpi["change"].as_f64(), Some(change), "{name}: {kpi}");
        }
    }
    assert_eq!(d["kpis"]["events"]["previous"].as_f64(), Some(5.0), "{d}");
    assert_eq!(d["kpis"]["events"]["value"].as_f64(), Some(21.0), "{d}");
    assert_eq!(
        d["kpis"]["events"]["change"].as_f64(),
        Some(16.0 / 5.0),
        "{d}"
    );
    assert!(d["kpis"]["revenue"]["change"].is_null(), "{d}");
    // Top lists.
    for (name, metric, dim) in [
        ("top_pages", Metric::Pageviews, D::PageUrl),
        ("top_products", Metric::Revenue, D::ProductId),
    ] {
        let grpc = grpc_metrics(&app, metric, start, end, G::Total, dim).await;
        let shown: Vec<(String, f64)> = d[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["group"].as_str().unwrap().to_owned(),
                    r["total"].as_f64().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(String, f64)> = grpc
            .series
            .iter()
            .map(|s| (s.group.clone(), s.total))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(shown, expected, "{name}");
    }
    // Rules and notifications as their own routes give them.
    let (_, rules) = get_json(&app, "/api/v1/alerts/rules").await;
    assert_eq!(d["rules"], rules["rules"], "{d}");
    assert_eq!(d["rules"][0]["state"], "firing");
    let (_, notes) = get_json(&app, "/api/v1/alerts/notifications?limit=5").await;
    let (_, again) = get_json(&app, "/api/v1/dashboard?range=1h&limit=5").await;
    assert_eq!(again["notifications"], notes["notifications"]);
    assert_eq!(again["last_id"], notes["last_id"]);
    let last = notes["last_id"].as_i64().unwrap();
    assert!(last > 0);
    let (_, after) = get_json(&app, &format!("/api/v1/dashboard?range=1h&after_id={last}")).await;
    assert_eq!(after["notifications"], serde_json::json!([]), "{after}");

    // Named ranges and their buckets; 7 d in hours, the previous week before.
    let (_, week) = get_json(&app, "/api/v1/dashboard?range=7d").await;
    assert_eq!(week["granularity"], "hour");
    assert_eq!(
        week["kpis"]["revenue"]["value"].as_f64(),
        Some(35.22),
        "{week}"
    );
    let partial = floats(&week["partial"]);
    let n = week["buckets"].as_array().unwrap().len() as f64;
    assert_eq!(*partial.last().unwrap(), n - 1.0, "{week}");
}

#[tokio::test]
async fn the_dashboard_takes_a_custom_range_and_explains_bad_ones() {
    let app = TestApp::spawn_with(|s| s.dashboard.currency = "JPY".into()).await;
    seed(&app).await;
    let end = floor_to(Utc::now(), 3600) + TimeDelta::hours(1);
    for (span, granularity, buckets) in [
        (TimeDelta::minutes(90), "minute", 90..=90),
        (TimeDelta::days(3), "hour", 72..=72),
        // 91 unless the range happens to start at midnight.
        (TimeDelta::days(90), "day", 90..=91),
    ] {
        let start = end - span;
        let path = format!(
            "/api/v1/dashboard?start={}&end={}",
            rfc3339(start),
            rfc3339(end)
        );
        let (status, d) = get_json(&app, &path).await;
        assert_eq!(status, 200, "{path}: {d}");
        assert_eq!(d["range"], "custom");
        assert_eq!(d["currency"], "JPY");
        assert_eq!(d["granularity"], granularity, "{path}");
        assert!(
            buckets.contains(&d["buckets"].as_array().unwrap().len()),
            "{path}: {d}"
        );
        assert_eq!(
            d["kpis"]["events"]["value"].as_f64(),
            Some(21.0),
            "{path}: {d}"
        );
        let previous = rfc3339(start - span);
        assert_eq!(d["previous"]["start"], previous.as_str(), "{path}");
    }
    // A range wholly in the past has no partial bucket; one cut mid-hour has.
    let past_end = end - TimeDelta::hours(2);
    let (_, d) = get_json(
        &app,
        &format!(
            "/api/v1/dashboard?start={}&end={}",
            rfc3339(past_end - TimeDelta::minutes(30)),
            rfc3339(past_end)
        ),
    )
    .await;
    assert_eq!(d["partial"], serde_json::json!([]), "{d}");
    let cut = floor_to(Utc::now(), 3600) - TimeDelta::days(2) + TimeDelta::minutes(30);
    let (_, d) = get_json(
        &app,
        &format!(
            "/api/v1/dashboard?start={}&end={}",
            rfc3339(cut),
            rfc3339(cut + TimeDelta::days(1) + TimeDelta::hours(1))
        ),
    )
    .await;
    assert_eq!(d["granularity"], "hour", "{d}");
    let last = d["buckets"].as_array().unwrap().len() - 1;
    assert_eq!(d["partial"], serde_json::json!([0, last]), "{d}");

    for (query, needle) in [
        (
            "start=2026-03-02T10:00:00Z&end=2026-03-02T09:00:00Z",
            "must be before",
        ),
        (
            "start=2026-03-02T10:00:00Z&end=2026-03-02T10:00:00Z",
            "must be before",
        ),
        ("start=2026-03-02T10:00:00Z", "both start and end"),
        ("start=yesterday&end=2026-03-02T10:00:00Z", "RFC 3339"),
        (
            "start=1990-01-01T00:00:00Z&end=2090-01-01T00:00:00Z",
            "buckets",
        ),
        ("range=2w", "not one of"),
        ("range=1h&limit=0", "limit"),
        ("range=1h&after_id=-1", "after_id"),
    ] {
        let (status, json) = get_json(&app, &format!("/api/v1/dashboard?{query}")).await;
        assert_eq!(status, 400, "{query}: {json}");
        assert_eq!(json["error"]["code"], "INVALID_ARGUMENT", "{query}");
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let (status, html) = app.http_get("/").await;
    assert_eq!(status, 200);
    assert!(html.contains("<script src=\"/assets/app.js\""), "{html}");
    for path in ["/assets/app.js", "/assets/app.css", "/favicon.svg"] {
        let (status, body) = app.http_get(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty(), "{path}");
        // Works offline: nothing is loaded from another host.
        for needle in ["https://", "http://", "//cdn", "@import"] {
            let hits: Vec<&str> = body
                .lines()
                .filter(|l| l.contains(needle) && !l.contains("http://www.w3.org/2000/svg"))
                .collect();
            assert!(hits.is_empty(), "{path} refers elsewhere: {hits:?}");
        }
    }
}

#[tokio::test]
async fn metrics_export_the_database_pool_and_http_requests() {
    let app = TestApp::spawn().await;
    seed(&app).await;
    let (status, _) = get_json(&app, "/api/v1/alerts/rules").await;
    assert_eq!(status, 200);
    let (status, text) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "pulse_database_pool_max_connections{pool=\"ingest\"} 16",
        "pulse_database_pool_max_connections{pool=\"query\"} 8",
        "pulse_database_pool_max_connections{pool=\"background\"} 6",
        "pulse_database_pool_connections{pool=\"query\"} ",
        "pulse_database_pool_idle_connections{pool=\"query\"} ",
        "pulse_database_pool_waiting_tasks{pool=\"ingest\"} 0",
        "pulse_grpc_requests_total{",
        "pulse_ingest_events_total{",
        "pulse_http_requests_total{route=\"/api/v1/alerts/rules\",status=\"200\"} 1",
        "pulse_http_request_duration_seconds_count{route=\"/api/v1/alerts/rules\",status=\"200\"} 1",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
}

#[tokio::test]
async fn the_dashboard_in_headless_chromium_matches_get_metrics_and_updates_live() {
    let dir = repo().join("tests/browser");
    require("node", Command::new("node").arg("--version"));
    require(
        "chromium",
        Command::new("/usr/bin/chromium").arg("--version"),
    );
    require("grpcurl", Command::new(grpcurl()).arg("-version"));
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: {}",
        crate::helpers::INSTALL_HINT
    );
    // Revenue in euros, from the setting; events in the previous hour so
    // the KPIs compare (revenue has none there: "—"); a purchase big
    // enough to test that KPI values are never cut at 360 px.
    let app = TestApp::spawn_with(|s| s.dashboard.currency = "EUR".into()).await;
    seed(&app).await;
    seed_at(&app, 75, 4, 2).await;
    let big = purchase(Uuid::now_v7(), "user-1", "sku-9", 3, "987654.32");
    ingest(&app, vec![message(vec![big])])
        .await
        .expect("ingest");
    firing_rule(&app, "Busy site").await;
    wait_for_firing(&app).await;

    let screenshot = repo().join("artifacts/dashboard.png");
    let (http, grpc) = (app.http_addr.to_string(), app.grpc_addr.to_string());
    let shot = screenshot.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(dir.join("dashboard.test.mjs"))
            .args([&http, &grpc])
            .arg(&shot)
            .arg("EUR")
            .env("GRPCURL", grpcurl())
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
}

/// A child process killed when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pulse-{what}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn a_real_prometheus_scrapes_metrics() {
    require("prometheus", Command::new("prometheus").arg("--version"));
    let app = TestApp::spawn().await;
    seed(&app).await;
    let dir = temp_dir("prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: pulse\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{}']\n",
            app.http_addr
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prometheus = Child(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts"),
    );
    let prometheus: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        // http_get expects a listener: ask only once Prometheus accepts.
        if tokio::net::TcpStream::connect(prometheus).await.is_ok() {
            let (status, body) =
                http_get(prometheus, "/api/v1/query?query=pulse_grpc_requests_total").await;
            if status == 200 && body.contains("\"__name__\":\"pulse_grpc_requests_total\"") {
                let (_, up) = http_get(prometheus, "/api/v1/query?query=up").await;
                assert!(up.contains("\"job\":\"pulse\""), "{up}");
                assert!(up.contains("\"1\"]"), "the target is up: {up}");
                let (_, pool) = http_get(
                    prometheus,
                    "/api/v1/query?query=pulse_database_pool_max_connections{pool=%22ingest%22}",
                )
                .await;
                assert!(pool.contains("\"16\"]"), "{pool}");
                break;
            }
            last = body;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            panic!("Prometheus never returned a Pulse series; last answer: {last}\nlog:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_python_example_streams_events_and_watches_alerts() {
    let python = crate::helpers::python();
    let app = TestApp::spawn().await;
    let grpc = app.grpc_addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(repo().join("examples/python/client.py"))
            .args(["--target", &grpc, "--events", "25", "--timeout", "20"])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python example failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("accepted=25"), "{stdout}");
    assert!(stdout.contains("FIRING"), "{stdout}");
}

#[tokio::test]
async fn the_grpcurl_examples_run() {
    require("grpcurl", Command::new(grpcurl()).arg("-version"));
    let app = TestApp::spawn().await;
    let grpc = app.grpc_addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(repo().join("examples/grpcurl.sh"))
            .arg(&grpc)
            .env("GRPCURL", grpcurl())
            .output()
            .expect("bash runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "examples/grpcurl.sh failed:\n{stdout}\n{stderr}"
    );
    for rpc in [
        "IngestEvents",
        "UpsertUsers",
        "GetMetrics",
        "CreateAlertRule",
        "GetAlertRule",
        "ListAlertRules",
        "UpdateAlertRule",
        "WatchAlerts",
        "DeleteAlertRule",
    ] {
        assert!(
            stdout.contains(&format!("== {rpc}")),
            "{rpc} not run:\n{stdout}"
        );
    }
    assert!(stdout.contains("\"accepted\": \"2\""), "{stdout}");
    assert!(stdout.contains("ALERT_STATE_FIRING"), "{stdout}");
}

#[tokio::test]
async fn the_demo_creates_rules_and_traffic_and_a_week_with_days_and_nights() {
    let db = TestDatabase::migrated().await;
    let url = db.url.clone();
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    // A small run: 2 events/s at the peak, 2 minutes of history at that
    // rate, 40,000 events over the week before (a floor of about 3 % of the
    // live rate far back, ramping up to it over the last hours).
    pulse::demo::run(pulse::demo::DemoSettings {
        database_url: url,
        grpc_addr: loopback,
        http_addr: loopback,
        rate: 2.0,
        day_length: Duration::from_secs(60),
        backfill: 40_000,
        history: Duration::from_secs(120),
        duration: Some(Duration::from_secs(2)),
    })
    .await
    .expect("the demo runs and stops");
    let app = TestApp::spawn_on(db, |_| {}).await;
    let rules = app
        .alerts()
        .list_alert_rules(ListAlertRulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .rules;
    let mut names: Vec<_> = rules.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["Checkout stalled", "Sign-up surge", "Traffic burst"]
    );
    let end = floor_to(Utc::now(), 3600) + TimeDelta::hours(1);
    let events = |start: DateTime<Utc>, granularity: Granularity| {
        let mut query = app.query();
        async move {
            query
                .get_metrics(GetMetricsRequest {
                    metric: Metric::Events as i32,
                    start: Some(to_timestamp(start)),
                    end: Some(to_timestamp(end)),
                    granularity: granularity as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .series
                .remove(0)
        }
    };
    let week = events(end - TimeDelta::days(8), Granularity::Total)
        .await
        .total;
    let recent = events(Utc::now() - TimeDelta::minutes(5), Granularity::Total)
        .await
        .total;
    // The backfill's budget plus the history at the live rate (~0.65 × 2/s
    // for 120 s), plus live traffic: the whole week is sent before it stops.
    assert!((40_000.0..40_600.0).contains(&week), "week: {week}");
    assert!(recent > 50.0, "live traffic and recent history: {recent}");
    // The 7-day view: every hour from 6 days back to 2 days back has
    // events, and afternoons (12–16 h UTC) are busier than nights (0–4 h).
    let hours = events(end - TimeDelta::days(7), Granularity::Hour).await;
    let (mut afternoons, mut nights) = (0.0, 0.0);
    for point in &hours.points[24..hours.points.len() - 48] {
        assert!(point.value > 0.0, "an empty hour in the week: {point:?}");
        let hour = (point.bucket_start.unwrap().seconds / 3600) % 24;
        match hour {
            12..=16 => afternoons += point.value,
            0..=4 => nights += point.value,
            _ => {}
        }
    }
    assert!(
        afternoons > 2.0 * nights,
        "days {afternoons} vs nights {nights}"
    );
}
