//! The HTTP transport: the web dashboard (`/`), its JSON API (`/api/v1/…`)
//! and Prometheus `/metrics`.
//!
//! The JSON API answers through the same code as the gRPC services (see
//! `api.rs`); nothing here queries the database by itself.

pub mod api;
pub mod dashboard;

use std::sync::Arc;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::db::PgPool;
use crate::grpc::query::QueryApi;
use crate::telemetry::{HttpLabels, Metrics};

/// What HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// For alert reads and the pool gauges of `/metrics`.
    pub pool: PgPool,
    /// GetMetrics itself, so the dashboard's numbers are GetMetrics' numbers.
    pub query: QueryApi,
}

/// Every HTTP route.
pub fn router(state: HttpState) -> Router {
    let api = Router::new()
        .route("/metrics", get(api::metrics))
        .route("/alerts/rules", get(api::rules))
        .route("/alerts/notifications", get(api::notifications))
        .fallback(api::not_found);
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/app.js", get(dashboard::app_js))
        .route("/assets/app.css", get(dashboard::app_css))
        .route("/favicon.svg", get(dashboard::favicon))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
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
    state.metrics.http_requests.get_or_create(&labels).inc();
    state
        .metrics
        .http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    state.metrics.observe_pool(state.pool.status());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
