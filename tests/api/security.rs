//! API keys: every service × scope, revocation and first key within
//! seconds, open health/reflection/assets, the dashboard API's 401/403, the
//! `pulse keys` commands and the refusal to listen beyond loopback without
//! a key, through the real binary.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use pulse::app::App;
use pulse::config::ServeSettings;
use pulse::domain::key::Scope;
use pulse::grpc::convert::to_timestamp;
use pulse::grpc::proto::alert_service_client::AlertServiceClient;
use pulse::grpc::proto::ingest_service_client::IngestServiceClient;
use pulse::grpc::proto::query_service_client::QueryServiceClient;
use pulse::grpc::proto::*;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase, http_get_with};

/// One RPC of each kind, so every service and both stream shapes are hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    UpsertUsers,
    IngestEvents,
    GetMetrics,
    ListAlertRules,
    CreateAlertRule,
    WatchAlerts,
}

const CALLS: [Call; 6] = [
    Call::UpsertUsers,
    Call::IngestEvents,
    Call::GetMetrics,
    Call::ListAlertRules,
    Call::CreateAlertRule,
    Call::WatchAlerts,
];

impl Call {
    /// The scope the call needs.
    fn scope(self) -> Scope {
        match self {
            Call::UpsertUsers | Call::IngestEvents => Scope::Ingest,
            Call::GetMetrics => Scope::Query,
            Call::ListAlertRules | Call::CreateAlertRule | Call::WatchAlerts => Scope::Admin,
        }
    }
}

/// `message` with `authorization: Bearer <key>` when a key is given.
fn with_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {key}").parse().expect("ASCII key"),
        );
    }
    request
}

/// Makes `call` with `key`; a valid request, so only auth can refuse it.
async fn call(channel: &Channel, call: Call, key: Option<&str>) -> Result<(), Status> {
    match call {
        Call::UpsertUsers => {
            IngestServiceClient::new(channel.clone())
                .upsert_users(with_key(UpsertUsersRequest { users: vec![] }, key))
                .await?;
        }
        Call::IngestEvents => {
            let batch = IngestEventsRequest {
                events: vec![crate::ingest::click(Uuid::new_v4(), "u1")],
                sent_at: None,
            };
            IngestServiceClient::new(channel.clone())
                .ingest_events(with_key(tokio_stream::iter(vec![batch]), key))
                .await?;
        }
        Call::GetMetrics => {
            let end = Utc::now();
            let request = GetMetricsRequest {
                metric: Metric::Events as i32,
                start: Some(to_timestamp(end - TimeDelta::hours(1))),
                end: Some(to_timestamp(end)),
                granularity: Granularity::Total as i32,
                filter: None,
                group_by: Dimension::Unspecified as i32,
                limit: 0,
            };
            QueryServiceClient::new(channel.clone())
                .get_metrics(with_key(request, key))
                .await?;
        }
        Call::ListAlertRules => {
            AlertServiceClient::new(channel.clone())
                .list_alert_rules(with_key(ListAlertRulesRequest::default(), key))
                .await?;
        }
        Call::CreateAlertRule => {
            let rule = AlertRule {
                id: String::new(),
                name: "auth probe".into(),
                metric: Metric::Events as i32,
                filter: None,
                window_seconds: 60,
                comparison: Comparison::GreaterThan as i32,
                threshold: 1e9,
                for_seconds: 0,
                enabled: false,
            };
            AlertServiceClient::new(channel.clone())
                .create_alert_rule(with_key(CreateAlertRuleRequest { rule: Some(rule) }, key))
                .await?;
        }
        Call::WatchAlerts => {
            // The stream is opened (headers received), then dropped.
            AlertServiceClient::new(channel.clone())
                .watch_alerts(with_key(WatchAlertsRequest::default(), key))
                .await?;
        }
    }
    Ok(())
}

fn code_of(result: Result<(), Status>) -> Code {
    result.err().map_or(Code::Ok, |s| s.code())
}

/// Polls `call` until it answers `wanted`; returns how long that took.
async fn wait_for_code(
    channel: &Channel,
    probe: Call,
    key: Option<&str>,
    wanted: Code,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = code_of(call(channel, probe, key).await);
        if got == wanted {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{probe:?} still answers {got:?}, not {wanted:?}, after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_keys_every_call_is_open_on_loopback() {
    let app = TestApp::spawn().await;
    for probe in CALLS {
        assert_eq!(
            code_of(call(&app.channel, probe, None).await),
            Code::Ok,
            "{probe:?}"
        );
        // With auth off a key is not even looked at.
        assert_eq!(
            code_of(call(&app.channel, probe, Some("pulse_whatever")).await),
            Code::Ok,
            "{probe:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_checks_the_key_and_its_scope() {
    let db = TestDatabase::migrated().await;
    let (_, ingest) = db.create_key(Scope::Ingest).await;
    let (_, query) = db.create_key(Scope::Query).await;
    let (_, admin) = db.create_key(Scope::Admin).await;
    let app = TestApp::spawn_on(db, |_| {}).await;

    for probe in CALLS {
        let none = code_of(call(&app.channel, probe, None).await);
        assert_eq!(none, Code::Unauthenticated, "{probe:?} without a key");
        let bad = code_of(call(&app.channel, probe, Some("pulse_not_a_key")).await);
        assert_eq!(bad, Code::Unauthenticated, "{probe:?} with an unknown key");
        for (scope, key) in [
            (Scope::Ingest, &ingest),
            (Scope::Query, &query),
            (Scope::Admin, &admin),
        ] {
            let expected = if scope == Scope::Admin || scope == probe.scope() {
                Code::Ok
            } else {
                Code::PermissionDenied
            };
            let got = code_of(call(&app.channel, probe, Some(key)).await);
            assert_eq!(got, expected, "{probe:?} with a key of scope {scope:?}");
        }
    }

    // A header that is not `Bearer <key>` is no key at all.
    let mut request = tonic::Request::new(ListAlertRulesRequest::default());
    request
        .metadata_mut()
        .insert("authorization", admin.parse().expect("ascii"));
    let status = app
        .alerts()
        .list_alert_rules(request)
        .await
        .expect_err("a bare key without `Bearer` is refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    // Non-ASCII bytes in the header are refused, not a panic.
    let mut request = tonic::Request::new(ListAlertRulesRequest::default());
    request.metadata_mut().insert(
        "authorization",
        tonic::metadata::MetadataValue::try_from("Bearer pulse_\u{00e9}".as_bytes())
            .expect("opaque header bytes"),
    );
    let status = app
        .alerts()
        .list_alert_rules(request)
        .await
        .expect_err("a non-ASCII key is refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    // Refusals never echo the key.
    let status = call(&app.channel, Call::GetMetrics, Some(&ingest))
        .await
        .expect_err("wrong scope");
    assert!(!status.message().contains(&ingest), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_key_is_refused_within_seconds() {
    let db = TestDatabase::migrated().await;
    let (revoked_id, revoked) = db.create_key(Scope::Admin).await;
    let (_, kept) = db.create_key(Scope::Admin).await;
    let app = TestApp::spawn_on(db, |_| {}).await;
    assert_eq!(
        code_of(call(&app.channel, Call::ListAlertRules, Some(&revoked)).await),
        Code::Ok
    );

    let mut conn = app.db.connect().await;
    pulse::db::keys::revoke(&mut conn, revoked_id)
        .await
        .expect("revoke");
    let took = wait_for_code(
        &app.channel,
        Call::ListAlertRules,
        Some(&revoked),
        Code::Unauthenticated,
    )
    .await;
    assert!(took < Duration::from_secs(5), "revocation took {took:?}");
    // Streams refuse it too; the other key still works.
    assert_eq!(
        code_of(call(&app.channel, Call::WatchAlerts, Some(&revoked)).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code_of(call(&app.channel, Call::ListAlertRules, Some(&kept)).await),
        Code::Ok
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_key_turns_auth_on_within_seconds() {
    let app = TestApp::spawn().await;
    assert_eq!(
        code_of(call(&app.channel, Call::GetMetrics, None).await),
        Code::Ok
    );
    let (_, key) = app.db.create_key(Scope::Query).await;
    let took = wait_for_code(&app.channel, Call::GetMetrics, None, Code::Unauthenticated).await;
    assert!(
        took < Duration::from_secs(5),
        "auth turned on after {took:?}"
    );
    assert_eq!(
        code_of(call(&app.channel, Call::GetMetrics, Some(&key)).await),
        Code::Ok
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reflection_metrics_and_the_page_stay_open() {
    let db = TestDatabase::migrated().await;
    db.create_key(Scope::Admin).await;
    let app = TestApp::spawn_on(db, |_| {}).await;
    assert_eq!(
        code_of(call(&app.channel, Call::GetMetrics, None).await),
        Code::Unauthenticated
    );

    app.health()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no key");
    let addr = app.grpc_addr.to_string();
    let list = crate::foundation::run_grpcurl(&["-plaintext", &addr, "list"]).await;
    assert!(list.contains("pulse.v1.QueryService"), "{list}");
    let described =
        crate::foundation::run_grpcurl(&["-plaintext", &addr, "describe", "pulse.v1.AlertService"])
            .await;
    assert!(described.contains("WatchAlerts"), "{described}");

    for path in [
        "/",
        "/assets/app.js",
        "/assets/app.css",
        "/favicon.svg",
        "/metrics",
    ] {
        let (status, _) = app.http_get(path).await;
        assert_eq!(status, 200, "{path} is open");
    }
    // Refusals are counted like any other call.
    let (_, metrics) = app.http_get("/metrics").await;
    assert!(
        metrics.contains(r#"method="/pulse.v1.QueryService/GetMetrics",code="Unauthenticated""#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_api_needs_a_query_key() {
    let db = TestDatabase::migrated().await;
    let (_, ingest) = db.create_key(Scope::Ingest).await;
    let (_, query) = db.create_key(Scope::Query).await;
    let (_, admin) = db.create_key(Scope::Admin).await;
    let app = TestApp::spawn_on(db, |_| {}).await;

    for path in [
        "/api/v1/metrics?metric=events&range=1h",
        "/api/v1/alerts/rules",
        "/api/v1/alerts/notifications",
        "/api/v1/no-such-route",
    ] {
        let (status, body) = http_get_with(app.http_addr, path, &[]).await;
        assert_eq!(status, 401, "{path}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        assert_eq!(json["error"]["code"], "UNAUTHENTICATED", "{body}");

        let (status, _) = http_get_with(
            app.http_addr,
            path,
            &[("Authorization", "Bearer pulse_nope")],
        )
        .await;
        assert_eq!(status, 401, "{path} with an unknown key");

        let bearer = format!("Bearer {ingest}");
        let (status, body) =
            http_get_with(app.http_addr, path, &[("Authorization", &bearer)]).await;
        assert_eq!(status, 403, "{path} with an ingest key: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        assert_eq!(json["error"]["code"], "PERMISSION_DENIED", "{body}");

        let expected = if path.ends_with("no-such-route") {
            404
        } else {
            200
        };
        for key in [&query, &admin] {
            let bearer = format!("Bearer {key}");
            let (status, body) =
                http_get_with(app.http_addr, path, &[("Authorization", &bearer)]).await;
            assert_eq!(status, expected, "{path}: {body}");
        }
    }
}

/// Runs the real `pulse` binary with `args` against `url`; returns the
/// exit success, stdout and stderr.
async fn pulse_bin(url: &str, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run pulse");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_keys_commands_create_list_and_revoke() {
    let db = TestDatabase::migrated().await;
    let (ok, stdout, stderr) = pulse_bin(
        &db.url,
        &["keys", "create", "--scope", "query", "--name", "grafana"],
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    // The key alone on stdout (`KEY=$(pulse keys create …)`), the rest on stderr.
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let key = stdout.trim_end().to_owned();
    assert!(key.starts_with("pulse_") && !key.contains(' '), "{stdout}");
    // Only the hash is stored.
    let mut conn = db.connect().await;
    use pulse::db::schema::api_keys::dsl as k;
    let (id, hash): (Uuid, Vec<u8>) = k::api_keys
        .select((k::id, k::key_hash))
        .first(&mut conn)
        .await
        .expect("one key row");
    assert_eq!(hash, pulse::domain::key::hash_key(&key).to_vec());
    assert!(stderr.contains(&id.to_string()), "{stderr}");

    let (ok, list, _) = pulse_bin(&db.url, &["keys", "list"]).await;
    assert!(ok);
    let line = list
        .lines()
        .find(|l| l.contains(&id.to_string()))
        .unwrap_or_else(|| panic!("the key is listed: {list}"));
    assert!(line.contains("query") && line.contains("grafana"), "{line}");
    assert!(!list.contains(&key), "list never shows the key");

    // A server accepts it, and records its use within a refresh. (A second
    // key keeps auth on once this one is revoked: a loopback server with
    // no key left is open again.)
    db.create_key(Scope::Admin).await;
    let app = TestApp::spawn_on(db, |_| {}).await;
    assert_eq!(
        code_of(call(&app.channel, Call::GetMetrics, Some(&key)).await),
        Code::Ok
    );
    assert_eq!(
        code_of(call(&app.channel, Call::UpsertUsers, Some(&key)).await),
        Code::PermissionDenied
    );
    let started = Instant::now();
    loop {
        let used: Option<chrono::DateTime<Utc>> = k::api_keys
            .find(id)
            .select(k::last_used_at)
            .first(&mut conn)
            .await
            .expect("key row");
        if used.is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "last_used_at never set"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, list, _) = pulse_bin(&app.db.url, &["keys", "list"]).await;
    let line = list
        .lines()
        .find(|l| l.contains(&id.to_string()))
        .expect("listed");
    assert_eq!(line.matches(" - ").count(), 1, "used, not revoked: {line}");

    let (ok, stdout, stderr) = pulse_bin(&app.db.url, &["keys", "revoke", &id.to_string()]).await;
    assert!(ok, "{stdout}{stderr}");
    wait_for_code(
        &app.channel,
        Call::GetMetrics,
        Some(&key),
        Code::Unauthenticated,
    )
    .await;
    let (_, list, _) = pulse_bin(&app.db.url, &["keys", "list"]).await;
    let line = list
        .lines()
        .find(|l| l.contains(&id.to_string()))
        .expect("listed");
    assert!(!line.contains(" - "), "revoked and used: {line}");

    // Bad input: unknown id, unknown scope.
    let (ok, _, stderr) = pulse_bin(
        &app.db.url,
        &["keys", "revoke", &Uuid::new_v4().to_string()],
    )
    .await;
    assert!(!ok && stderr.contains("no API key"), "{stderr}");
    let (ok, _, stderr) = pulse_bin(
        &app.db.url,
        &["keys", "create", "--scope", "root", "--name", "x"],
    )
    .await;
    assert!(!ok && stderr.contains("root"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_to_listen_beyond_loopback_without_a_key() {
    let db = TestDatabase::migrated().await;
    let (ok, stdout, stderr) = pulse_bin(
        &db.url,
        &[
            "serve",
            "--grpc-addr",
            "0.0.0.0:0",
            "--http-addr",
            "127.0.0.1:0",
        ],
    )
    .await;
    assert!(!ok, "serve must fail: {stdout}{stderr}");
    assert!(
        stderr.contains("pulse keys create --scope admin --name ops"),
        "{stderr}"
    );
    let (ok, _, stderr) = pulse_bin(
        &db.url,
        &[
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "0.0.0.0:0",
        ],
    )
    .await;
    assert!(!ok && stderr.contains("pulse keys create"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exposed_server_with_a_key_starts_and_never_falls_open() {
    let db = TestDatabase::migrated().await;
    let (id, key) = db.create_key(Scope::Admin).await;
    let mut settings = ServeSettings::for_database(&db.url);
    settings.grpc_addr = "0.0.0.0:0".parse().expect("addr");
    let app = App::build(settings).await.expect("a key exists: it starts");
    let port = app.grpc_addr().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    assert_eq!(
        code_of(call(&channel, Call::GetMetrics, Some(&key)).await),
        Code::Ok
    );
    assert_eq!(
        code_of(call(&channel, Call::GetMetrics, None).await),
        Code::Unauthenticated
    );

    // With its only key revoked, the exposed server refuses everything
    // rather than turning auth off.
    let mut conn = db.connect().await;
    pulse::db::keys::revoke(&mut conn, id)
        .await
        .expect("revoke");
    wait_for_code(
        &channel,
        Call::GetMetrics,
        Some(&key),
        Code::Unauthenticated,
    )
    .await;
    assert_eq!(
        code_of(call(&channel, Call::GetMetrics, None).await),
        Code::Unauthenticated
    );
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health stays open");

    let _ = stop.send(());
    task.await.expect("no panic").expect("clean shutdown");
}
