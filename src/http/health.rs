//! `/healthz` and `/readyz`: probes for container runtimes and load
//! balancers, on the HTTP listener, open without an API key, JSON bodies.
//!
//! * `/healthz` answers 200 while the process serves HTTP at all (liveness:
//!   restart the process when it stops answering). It touches nothing else,
//!   so a database outage never gets a healthy process restarted.
//! * `/readyz` answers 200 only when the database answers a query through
//!   the pool and every migration of this build is applied (readiness: send
//!   traffic here); otherwise 503 naming the failed check. The checks share
//!   one [`READY_TIMEOUT`], so a probe never hangs on a stuck database.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::HttpState;
use crate::db;

/// The longest a readiness probe waits for a connection and its queries.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: the process is up and serving HTTP.
pub async fn healthz() -> Response {
    answer(StatusCode::OK, json!({ "status": "ok" }))
}

/// Readiness: the database is reachable and the schema is current.
pub async fn readyz(State(state): State<HttpState>) -> Response {
    let checks = tokio::time::timeout(READY_TIMEOUT, async {
        let mut conn = db::connection(&state.pool).await?;
        db::migrations::pending_on(&mut conn).await
    })
    .await;
    let (database, migrations) = match checks {
        Ok(Ok(pending)) => (
            json!({ "ok": true }),
            json!({ "ok": pending.is_empty(), "pending": pending }),
        ),
        Ok(Err(error)) => (
            json!({ "ok": false, "error": crate::redact::secrets(&error.to_string()) }),
            json!({ "ok": false, "error": "not checked: the database is unreachable" }),
        ),
        Err(_) => (
            json!({ "ok": false, "error": format!("no answer within {READY_TIMEOUT:?}") }),
            json!({ "ok": false, "error": "not checked: the database is unreachable" }),
        ),
    };
    let ready = database["ok"] == true && migrations["ok"] == true;
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    answer(
        status,
        json!({ "status": word, "checks": { "database": database, "migrations": migrations } }),
    )
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}
