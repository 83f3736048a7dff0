//! `/healthz` (the process serves) and `/readyz` (the database answers and
//! the schema is current) on the HTTP listener: JSON, no API key needed.

use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use pulse::domain::key::Scope;
use serde_json::Value;

use crate::helpers::{TestApp, TestDatabase, admin_connection};

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let (status, body) = app.http_get(path).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, json)
}

#[tokio::test]
async fn healthz_and_readyz_answer_json_without_a_key_even_when_keys_exist() {
    let db = TestDatabase::migrated().await;
    // With a key stored, the dashboard API needs one; the probes do not.
    db.create_key(Scope::Admin).await;
    let app = TestApp::spawn_on(db, |_| {}).await;
    let (status, _) = app.http_get("/api/v1/alerts/rules").await;
    assert_eq!(status, 401, "the API does need a key here");

    let (status, live) = get_json(&app, "/healthz").await;
    assert_eq!((status, &live), (200, &serde_json::json!({"status": "ok"})));

    let (status, ready) = get_json(&app, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["database"]["ok"], true, "{ready}");
    assert_eq!(ready["checks"]["migrations"]["ok"], true, "{ready}");
    assert_eq!(
        ready["checks"]["migrations"]["pending"],
        serde_json::json!([]),
        "{ready}"
    );
}

#[tokio::test]
async fn readyz_is_503_naming_the_pending_migration_after_a_revert() {
    let app = TestApp::spawn().await;
    let reverted = pulse::db::migrations::revert(&app.db.url, false)
        .await
        .expect("revert the last migration");
    let (status, ready) = get_json(&app, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["status"], "not_ready", "{ready}");
    assert_eq!(ready["checks"]["database"]["ok"], true, "{ready}");
    assert_eq!(ready["checks"]["migrations"]["ok"], false, "{ready}");
    assert_eq!(
        ready["checks"]["migrations"]["pending"],
        serde_json::json!(reverted),
        "{ready}"
    );
    // Liveness does not follow the schema: restarting would not help.
    let (status, _) = get_json(&app, "/healthz").await;
    assert_eq!(status, 200);

    pulse::db::migrations::run_pending(&app.db.url)
        .await
        .expect("migrate again");
    let (status, ready) = get_json(&app, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_within_its_timeout_when_the_database_is_gone() {
    let app = TestApp::spawn().await;
    let (status, _) = get_json(&app, "/readyz").await;
    assert_eq!(status, 200);
    // Gone for good: every connection ended and the database dropped.
    admin_connection()
        .await
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            app.db.name
        ))
        .await
        .expect("drop the database under the server");
    let started = Instant::now();
    let (status, ready) = get_json(&app, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["database"]["ok"], false, "{ready}");
    assert!(
        ready["checks"]["database"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "the failure is named: {ready}"
    );
    assert!(
        started.elapsed() < pulse::http::health::READY_TIMEOUT + Duration::from_secs(1),
        "the probe answered after {:?}",
        started.elapsed()
    );
    let (status, _) = get_json(&app, "/healthz").await;
    assert_eq!(status, 200, "the process itself is fine");
}
