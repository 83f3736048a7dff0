//! The HTTP transport: the web dashboard (`/`), its JSON API (`/api/v1/…`),
//! Prometheus `/metrics` and the `/healthz` and `/readyz` probes.
//!
//! The JSON API answers through the same code as the gRPC services (see
//! `api.rs`); nothing here queries the database by itself. Every response
//! passes the Host check and carries the security headers (`protect.rs`);
//! unknown paths answer a JSON 404 like every API error.

pub mod api;
pub mod dashboard;
pub mod health;
pub mod protect;

use std::sync::Arc;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::KeySet;
use crate::config::DashboardSettings;
use crate::db::{PgPool, PoolRole};
use crate::domain::key::Scope;
use crate::query::Queries;
use crate::quota::{QuerySlot, Quotas};
use crate::telemetry::{HttpLabels, Telemetry};

/// What HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub telemetry: Arc<Telemetry>,
    /// The query pool, for alert reads.
    pub pool: PgPool,
    /// Every pool of the primary, for the pool gauges of `/metrics`.
    pub pools: Vec<(PoolRole, PgPool)>,
    /// GetMetrics itself, so the dashboard's numbers are GetMetrics' numbers.
    pub query: Queries,
    /// The API keys; `/api/v1/*` needs scope `query`.
    pub keys: Arc<KeySet>,
    /// Every `/api/v1` request with a key takes one query of its budget.
    pub quotas: Arc<Quotas>,
    /// The names requests may use besides addresses and `localhost`.
    pub hosts: Arc<protect::AllowedHosts>,
    /// What the page shows besides data (the revenue currency).
    pub dashboard: Arc<DashboardSettings>,
}

/// Every HTTP route.
pub fn router(state: HttpState) -> Router {
    let api = Router::new()
        .route("/metrics", get(api::get_metrics))
        .route("/dashboard", get(api::dashboard))
        .route("/alerts/rules", get(api::rules))
        .route("/alerts/notifications", get(api::notifications))
        .fallback(api::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_query_key,
        ));
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/app.js", get(dashboard::app_js))
        .route("/assets/app.css", get(dashboard::app_css))
        .route("/favicon.svg", get(dashboard::favicon))
        .route("/metrics", get(prometheus))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .nest("/api/v1", api)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            protect::check_host,
        ))
        .layer(middleware::from_fn(protect::security_headers))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts every response and its latency by route pattern and status (the
/// pattern, not the path, so query strings and unknown paths cannot grow
/// the label set).
async fn observe(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = HttpLabels {
        route,
        status: response.status().as_u16().to_string(),
    };
    state.telemetry.http_requests.get_or_create(&labels).inc();
    state
        .telemetry
        .http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The dashboard API needs a key of scope `query` (or `admin`) once keys
/// exist; the page and `/metrics` stay open. Refusals are the API's JSON
/// errors (401 with `www-authenticate: Bearer`, 403, 429 with
/// `retry-after` past the key's queries/s or concurrent queries).
async fn require_query_key(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    match check_query_key(&state, request.headers()).await {
        Ok(_running) => next.run(request).await,
        Err(refusal) => *refusal,
    }
}

/// Any path no route serves: a JSON 404, after the key check for paths
/// under `/api/` (so probing without a key learns nothing there).
async fn not_found(State(state): State<HttpState>, request: Request) -> Response {
    if request.uri().path().starts_with("/api/")
        && let Err(refusal) = check_query_key(&state, request.headers()).await
    {
        return *refusal;
    }
    api::not_found().await.into_response()
}

/// The key check of the dashboard API: the caller's running-query slot (if
/// it came with a key) to hold while it runs, or the refusal to send.
async fn check_query_key(
    state: &HttpState,
    headers: &header::HeaderMap,
) -> Result<Option<QuerySlot>, Box<Response>> {
    let header = headers
        .get(header::AUTHORIZATION)
        .map(http::HeaderValue::as_bytes);
    match state.keys.authorize(header, Scope::Query) {
        Ok(Some(caller)) => {
            let slot = match state.quotas.take_query(caller.key_id) {
                Ok(()) => state.quotas.start_query(caller.key_id).await,
                Err(exceeded) => Err(exceeded),
            };
            slot.map(Some).map_err(|exceeded| {
                Box::new(api::ApiError::from(crate::error::Error::from(exceeded)).into_response())
            })
        }
        Ok(None) => Ok(None),
        Err(error) => {
            let unauthenticated = matches!(error, crate::error::Error::Unauthenticated(_));
            let mut response = api::ApiError::from(error).into_response();
            if unauthenticated {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            Err(Box::new(response))
        }
    }
}

/// `GET /metrics`: Pulse's own telemetry in Prometheus text format (the
/// product metrics that users ask for are `/api/v1/metrics`).
async fn prometheus(State(state): State<HttpState>) -> impl IntoResponse {
    for (role, pool) in &state.pools {
        state.telemetry.observe_pool(role.label(), pool.status());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.telemetry.render(),
    )
}
