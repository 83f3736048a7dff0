//! The dashboard's JSON API, `/api/v1/…` (documented in README.md, "JSON API").
//!
//! A thin edge over the code the gRPC services run: metric requests become
//! a proto `GetMetricsRequest`, are validated by [`metric_query`] and answered
//! by [`QueryApi::answer`], exactly as `GetMetrics`; alert rules, their states
//! and notifications come from `db::alerts`. `/dashboard` answers every panel
//! of the page in one document through those same functions (so the page
//! cannot disagree with `GetMetrics`), with each KPI's previous period.
//! Errors are [`Error`]s mapped with [`Error::http_status`] and returned as
//! `{"error":{"code","message"}}`.
//!
//! Every route sits under one nested router so that the API-key check of the
//! security work can be one layer there: the page already sends
//! `Authorization: Bearer <key>` when it has one and asks for a key on 401.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::HttpState;
use crate::db::{alerts as store, connection};
use crate::domain::alert::{AlertRule, Comparison, Notification, NotificationState, Phase};
use crate::domain::metric::{Filter, Granularity, Metric, MetricQuery, SeriesValues, ceil_to};
use crate::error::Error;
use crate::grpc::convert::to_timestamp;
use crate::grpc::proto;
use crate::grpc::query::metric_query;

/// Most notifications one request returns.
pub const MAX_NOTIFICATIONS: i64 = 1_000;
/// Notifications returned when the request names no `limit`.
const DEFAULT_NOTIFICATIONS: i64 = 50;
/// Rules whose current value `/alerts/rules` computes (one query each).
const MAX_LIVE_VALUES: usize = 100;

/// An [`Error`] as an HTTP response.
pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.http_status();
        let message = match &self.0 {
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error (details are in the server log)".to_owned()
            }
            other => crate::error::client_message(other.to_string()),
        };
        // The gRPC code's canonical name, so both APIs name errors alike.
        let code = match &self.0 {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::NotFound(_) => "NOT_FOUND",
            Error::ResourceExhausted(_) => "RESOURCE_EXHAUSTED",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::Unauthenticated(_) => "UNAUTHENTICATED",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
            Error::FailedPrecondition(_) => "FAILED_PRECONDITION",
            Error::Unimplemented(_) => "UNIMPLEMENTED",
            Error::Internal(_) => "INTERNAL",
        };
        (
            status,
            Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn query_params<T>(params: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    params
        .map(|Query(p)| p)
        .map_err(|e| ApiError(Error::InvalidArgument(e.body_text())))
}

/// RFC 3339 with a `Z`, as the page and the proto JSON mapping write it.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The dashboard's time ranges and the granularity each defaults to.
fn parse_range(text: &str) -> Result<(TimeDelta, Granularity), Error> {
    match text {
        "15m" => Ok((TimeDelta::minutes(15), Granularity::Minute)),
        "1h" => Ok((TimeDelta::hours(1), Granularity::Minute)),
        "24h" => Ok((TimeDelta::hours(24), Granularity::Minute)),
        "7d" => Ok((TimeDelta::days(7), Granularity::Hour)),
        other => Err(Error::InvalidArgument(format!(
            "range `{other}` is not one of 15m, 1h, 24h, 7d (or give start and end)"
        ))),
    }
}

fn parse_metric(text: &str) -> Result<proto::Metric, Error> {
    let name = text.to_ascii_lowercase();
    match name.strip_prefix("metric_").unwrap_or(&name) {
        "events" => Ok(proto::Metric::Events),
        "unique_users" => Ok(proto::Metric::UniqueUsers),
        "pageviews" => Ok(proto::Metric::Pageviews),
        "purchases" => Ok(proto::Metric::Purchases),
        "revenue" => Ok(proto::Metric::Revenue),
        "quantity" => Ok(proto::Metric::Quantity),
        _ => Err(Error::InvalidArgument(format!(
            "metric `{text}` is not one of events, unique_users, pageviews, purchases, revenue, quantity"
        ))),
    }
}

fn parse_granularity(text: &str) -> Result<Granularity, Error> {
    let name = text.to_ascii_lowercase();
    match name.strip_prefix("granularity_").unwrap_or(&name) {
        "minute" => Ok(Granularity::Minute),
        "hour" => Ok(Granularity::Hour),
        "day" => Ok(Granularity::Day),
        "total" => Ok(Granularity::Total),
        _ => Err(Error::InvalidArgument(format!(
            "granularity `{text}` is not one of minute, hour, day, total"
        ))),
    }
}

fn proto_granularity(g: Granularity) -> proto::Granularity {
    match g {
        Granularity::Minute => proto::Granularity::Minute,
        Granularity::Hour => proto::Granularity::Hour,
        Granularity::Day => proto::Granularity::Day,
        Granularity::Total => proto::Granularity::Total,
    }
}

fn granularity_name(g: Granularity) -> &'static str {
    match g {
        Granularity::Minute => "minute",
        Granularity::Hour => "hour",
        Granularity::Day => "day",
        Granularity::Total => "total",
    }
}

fn parse_dimension(text: &str) -> Result<proto::Dimension, Error> {
    let name = text.to_ascii_lowercase();
    match name.strip_prefix("dimension_").unwrap_or(&name) {
        "" | "none" | "unspecified" => Ok(proto::Dimension::Unspecified),
        "event_type" => Ok(proto::Dimension::EventType),
        "page_url" => Ok(proto::Dimension::PageUrl),
        "product_id" => Ok(proto::Dimension::ProductId),
        _ => Err(Error::InvalidArgument(format!(
            "group_by `{text}` is not one of none, event_type, page_url, product_id"
        ))),
    }
}

fn parse_time(field: &str, text: &str) -> Result<DateTime<Utc>, Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::InvalidArgument(format!("{field} `{text}` is not RFC 3339: {e}")))
}

fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::Events => "events",
        Metric::UniqueUsers => "unique_users",
        Metric::Pageviews => "pageviews",
        Metric::Purchases => "purchases",
        Metric::Revenue => "revenue",
        Metric::Quantity => "quantity",
    }
}

/// `GET /api/v1/metrics` parameters (see README.md, "JSON API").
#[derive(Debug, Default, Deserialize)]
pub struct MetricsParams {
    metric: Option<String>,
    range: Option<String>,
    start: Option<String>,
    end: Option<String>,
    granularity: Option<String>,
    group_by: Option<String>,
    limit: Option<u32>,
    /// Comma-separated event types.
    event_type: Option<String>,
    page_url: Option<String>,
    product_id: Option<String>,
    user_id: Option<String>,
}

/// The range and granularity of a request: explicit `start` and `end`, or
/// a named `range` ending at the next minute boundary (so consecutive polls
/// within a minute ask the same question and share the query cache).
fn resolve_range(
    p: &MetricsParams,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>, Granularity), Error> {
    let explicit = match (&p.start, &p.end) {
        (Some(start), Some(end)) => Some((parse_time("start", start)?, parse_time("end", end)?)),
        (None, None) => None,
        _ => {
            return Err(Error::InvalidArgument(
                "give both start and end, or neither (and a range)".into(),
            ));
        }
    };
    let (start, end, default_granularity) = match explicit {
        Some((start, end)) => (start, end, Granularity::Total),
        None => {
            let (span, granularity) = parse_range(p.range.as_deref().unwrap_or("1h"))?;
            let end = ceil_to(now + TimeDelta::milliseconds(1), 60);
            (end - span, end, granularity)
        }
    };
    let granularity = match p.granularity.as_deref() {
        Some(text) => parse_granularity(text)?,
        None => default_granularity,
    };
    Ok((start, end, granularity))
}

/// `GET /api/v1/metrics`: GetMetrics over HTTP.
pub async fn metrics(
    State(state): State<HttpState>,
    params: Result<Query<MetricsParams>, QueryRejection>,
) -> ApiResult {
    let p = query_params(params)?;
    let metric = parse_metric(
        p.metric
            .as_deref()
            .ok_or_else(|| Error::InvalidArgument("metric is required".into()))?,
    )?;
    let (start, end, granularity) = resolve_range(&p, Utc::now())?;
    let group_by = parse_dimension(p.group_by.as_deref().unwrap_or(""))?;
    let event_types = p
        .event_type
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let request = proto::GetMetricsRequest {
        metric: metric as i32,
        start: Some(to_timestamp(start)),
        end: Some(to_timestamp(end)),
        granularity: proto_granularity(granularity) as i32,
        filter: Some(proto::Filter {
            event_types,
            page_url: p.page_url.clone().unwrap_or_default(),
            product_id: p.product_id.clone().unwrap_or_default(),
            user_id: p.user_id.clone().unwrap_or_default(),
        }),
        group_by: group_by as i32,
        limit: p.limit.unwrap_or(0),
    };
    let (query, series, approximate) = get_metrics(&state, request).await?;
    let buckets: Vec<String> = query.bucket_starts().into_iter().map(rfc3339).collect();
    let series: Vec<Value> = series.iter().map(series_json).collect();
    Ok(Json(json!({
        "metric": metric_name(query.metric),
        "start": rfc3339(query.start),
        "end": rfc3339(query.end),
        "granularity": granularity_name(query.granularity),
        "group_by": p.group_by.as_deref().unwrap_or("none"),
        "approximate": approximate,
        "buckets": buckets,
        "series": series,
    })))
}

/// A GetMetrics request answered exactly as the gRPC service answers it:
/// the same validation ([`metric_query`]) and the same query path
/// ([`QueryApi::answer`](crate::grpc::query::QueryApi::answer)).
async fn get_metrics(
    state: &HttpState,
    request: proto::GetMetricsRequest,
) -> Result<(MetricQuery, Vec<SeriesValues>, bool), Error> {
    let query = metric_query(request, state.query.max_string_bytes())?;
    let (series, approximate) = state.query.answer(&query).await?;
    Ok((query, series, approximate))
}

fn series_json(s: &SeriesValues) -> Value {
    json!({ "group": s.group, "total": s.total, "values": s.values })
}

fn comparison_name(c: Comparison) -> &'static str {
    match c {
        Comparison::GreaterThan => "greater_than",
        Comparison::GreaterOrEqual => "greater_or_equal",
        Comparison::LessThan => "less_than",
        Comparison::LessOrEqual => "less_or_equal",
    }
}

fn filter_json(f: &Filter) -> Value {
    json!({
        "event_types": f.event_types,
        "page_url": f.page_url,
        "product_id": f.product_id,
        "user_id": f.user_id,
    })
}

/// `GET /api/v1/alerts/rules`: every rule with its state (from the
/// evaluator's state rows) and its value now (the rule's own GetMetrics
/// query over the window ending now).
pub async fn rules(State(state): State<HttpState>) -> ApiResult {
    Ok(Json(json!({ "rules": rules_json(&state).await? })))
}

/// Every rule as `/alerts/rules` lists it.
async fn rules_json(state: &HttpState) -> Result<Vec<Value>, Error> {
    let (rules, states) = {
        let mut conn = connection(&state.pool).await?;
        store::load_for_tick(&mut conn).await?
    };
    let states: HashMap<_, _> = states
        .into_iter()
        .map(|s| (s.state.rule_id, s.state))
        .collect();
    let now = Utc::now();
    let mut out = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let AlertRule { id, spec, revision } = rule;
        let stored = states.get(id).filter(|s| s.revision == *revision);
        let phase = if !spec.enabled {
            "disabled"
        } else {
            match stored.map(|s| s.phase) {
                Some(Phase::Firing) => "firing",
                Some(Phase::Pending) => "pending",
                Some(Phase::Inactive) | None => "inactive",
            }
        };
        // A value that cannot be computed is left out (null); the rule and
        // its state are still listed.
        let value = match spec.key().query(now) {
            Ok(query) if i < MAX_LIVE_VALUES => match state.query.answer(&query).await {
                Ok((series, _)) => series.first().map(|s| s.total),
                Err(error) => {
                    tracing::warn!(%error, rule_id = %id, "alert rule value not computed");
                    None
                }
            },
            _ => None,
        };
        out.push(json!({
            "id": id.to_string(),
            "name": spec.name,
            "metric": metric_name(spec.metric),
            "filter": filter_json(&spec.filter),
            "window_seconds": spec.window_seconds,
            "comparison": comparison_name(spec.comparison),
            "threshold": spec.threshold,
            "for_seconds": spec.for_seconds,
            "enabled": spec.enabled,
            "state": phase,
            "since": stored.map(|s| rfc3339(s.since)),
            "value": value,
        }));
    }
    Ok(out)
}

/// `GET /api/v1/alerts/notifications` parameters.
#[derive(Debug, Default, Deserialize)]
pub struct NotificationsParams {
    after_id: Option<i64>,
    limit: Option<i64>,
}

fn notification_json(n: &Notification) -> Value {
    json!({
        "id": n.id,
        "rule_id": n.rule_id.to_string(),
        "rule_name": n.rule_name,
        "state": match n.state {
            NotificationState::Firing => "firing",
            NotificationState::Resolved => "resolved",
        },
        "value": n.value,
        "threshold": n.threshold,
        "window_start": rfc3339(n.window_start),
        "window_end": rfc3339(n.window_end),
        "fired_at": rfc3339(n.fired_at),
    })
}

/// `GET /api/v1/alerts/notifications`: the stored notifications after
/// `after_id` (as `WatchAlerts` replays them), or the latest `limit` when
/// `after_id` is absent; always in id order. `last_id` is the highest id
/// stored, to poll from.
pub async fn notifications(
    State(state): State<HttpState>,
    params: Result<Query<NotificationsParams>, QueryRejection>,
) -> ApiResult {
    let p = query_params(params)?;
    let (list, last_id) = notifications_json(&state, p.after_id, p.limit).await?;
    Ok(Json(json!({ "notifications": list, "last_id": last_id })))
}

/// The notifications after `after_id`, or the latest `limit`, and the last id.
async fn notifications_json(
    state: &HttpState,
    after_id: Option<i64>,
    limit: Option<i64>,
) -> Result<(Vec<Value>, i64), Error> {
    let limit = limit.unwrap_or(DEFAULT_NOTIFICATIONS);
    if !(1..=MAX_NOTIFICATIONS).contains(&limit) {
        return Err(Error::InvalidArgument(format!(
            "limit must be between 1 and {MAX_NOTIFICATIONS}, not {limit}"
        )));
    }
    if after_id.is_some_and(|a| a < 0) {
        return Err(Error::InvalidArgument(
            "after_id must not be negative".into(),
        ));
    }
    let mut conn = connection(&state.pool).await?;
    let last_id = store::last_notification_id(&mut conn).await?;
    // Ids only grow, so "the latest `limit`" are at most `limit` below the last.
    let after = after_id.unwrap_or((last_id - limit).max(0));
    let list = store::notifications_after(&mut conn, after, &[], limit).await?;
    drop(conn);
    Ok((list.iter().map(notification_json).collect(), last_id))
}

/// `GET /api/v1/dashboard` parameters (see docs/dashboard.md).
#[derive(Debug, Default, Deserialize)]
pub struct DashboardParams {
    /// `15m`, `1h`, `24h` or `7d` (default `1h`), or give `start` and `end`.
    range: Option<String>,
    start: Option<String>,
    end: Option<String>,
    /// Notifications after this id; absent: the latest `limit`.
    after_id: Option<i64>,
    /// Most notifications returned (default 50, at most 1,000).
    limit: Option<i64>,
}

/// The headline numbers, in the order the page shows them.
const KPIS: [Metric; 5] = [
    Metric::Events,
    Metric::Pageviews,
    Metric::UniqueUsers,
    Metric::Revenue,
    Metric::Purchases,
];
/// Metric queries of one dashboard answer run at most this many at a time
/// (each holds a pooled connection while it runs), so one page takes a
/// bounded share of the pool however many panels it has.
const DASHBOARD_PARALLEL: usize = 4;
/// Groups in the events-by-type chart and the top lists.
const DASHBOARD_TOP: u32 = 10;

/// The range of a dashboard answer: a named range ending at the next
/// minute boundary (as `/metrics`), or an explicit `[start, end)` whose
/// buckets are minutes up to a day, hours up to 60 days, days beyond.
/// Returns the range's name (`custom` for an explicit one) too.
fn dashboard_range(
    p: &DashboardParams,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>, Granularity, String), Error> {
    match (&p.start, &p.end) {
        (Some(start), Some(end)) => {
            let (start, end) = (parse_time("start", start)?, parse_time("end", end)?);
            if start >= end {
                return Err(Error::InvalidArgument(format!(
                    "start ({}) must be before end ({})",
                    rfc3339(start),
                    rfc3339(end)
                )));
            }
            let span = end - start;
            let granularity = if span <= TimeDelta::days(1) {
                Granularity::Minute
            } else if span <= TimeDelta::days(60) {
                Granularity::Hour
            } else {
                Granularity::Day
            };
            Ok((start, end, granularity, "custom".to_owned()))
        }
        (None, None) => {
            let name = p.range.as_deref().unwrap_or("1h");
            let (span, granularity) = parse_range(name)?;
            let end = ceil_to(now + TimeDelta::milliseconds(1), 60);
            Ok((end - span, end, granularity, name.to_owned()))
        }
        _ => Err(Error::InvalidArgument(
            "give both start and end, or neither (and a range)".into(),
        )),
    }
}

/// The buckets of `query` that do not cover a whole bucket of data: cut by
/// the range's start or end, or not over yet at `now` (the current minute).
fn partial_buckets(query: &MetricQuery, now: DateTime<Utc>) -> Vec<usize> {
    let Some(step) = query.granularity.seconds() else {
        return Vec::new();
    };
    let step = TimeDelta::seconds(i64::from(step));
    let until = query.end.min(now);
    query
        .bucket_starts()
        .into_iter()
        .enumerate()
        .filter(|(_, b)| *b < query.start || *b + step > until)
        .map(|(i, _)| i)
        .collect()
}

fn metric_request(
    metric: Metric,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    granularity: Granularity,
    group_by: proto::Dimension,
) -> proto::GetMetricsRequest {
    let metric = match metric {
        Metric::Events => proto::Metric::Events,
        Metric::UniqueUsers => proto::Metric::UniqueUsers,
        Metric::Pageviews => proto::Metric::Pageviews,
        Metric::Purchases => proto::Metric::Purchases,
        Metric::Revenue => proto::Metric::Revenue,
        Metric::Quantity => proto::Metric::Quantity,
    };
    proto::GetMetricsRequest {
        metric: metric as i32,
        start: Some(to_timestamp(start)),
        end: Some(to_timestamp(end)),
        granularity: proto_granularity(granularity) as i32,
        filter: None,
        group_by: group_by as i32,
        limit: if group_by == proto::Dimension::Unspecified {
            0
        } else {
            DASHBOARD_TOP
        },
    }
}

/// The one series of an ungrouped answer (all zeros when nothing matched).
fn single(series: &[SeriesValues], buckets: usize) -> SeriesValues {
    series.first().cloned().unwrap_or_else(|| SeriesValues {
        group: String::new(),
        values: vec![0.0; buckets],
        total: 0.0,
    })
}

/// `GET /api/v1/dashboard`: every panel of the page in one answer, so a
/// refresh is one request. Each number is a GetMetrics answer computed by
/// [`get_metrics`] (the gRPC path), rules and notifications are those of
/// `/alerts/rules` and `/alerts/notifications`; each KPI also carries its
/// value over the previous period of the same length.
pub async fn dashboard(
    State(state): State<HttpState>,
    params: Result<Query<DashboardParams>, QueryRejection>,
) -> ApiResult {
    use proto::Dimension as D;
    let p = query_params(params)?;
    let now = Utc::now();
    let (start, end, granularity, range) = dashboard_range(&p, now)?;
    let (prev_start, prev_end) = (start - (end - start), start);

    // Series over the range, top lists, then the KPIs' totals that the
    // series do not give (distinct users) and the previous period's.
    let mut requests = vec![
        metric_request(Metric::Events, start, end, granularity, D::EventType),
        metric_request(Metric::Events, start, end, granularity, D::Unspecified),
        metric_request(Metric::Pageviews, start, end, granularity, D::Unspecified),
        metric_request(Metric::UniqueUsers, start, end, granularity, D::Unspecified),
        metric_request(Metric::Revenue, start, end, granularity, D::Unspecified),
        metric_request(Metric::Purchases, start, end, granularity, D::Unspecified),
        metric_request(
            Metric::Pageviews,
            start,
            end,
            Granularity::Total,
            D::PageUrl,
        ),
        metric_request(
            Metric::Revenue,
            start,
            end,
            Granularity::Total,
            D::ProductId,
        ),
        metric_request(
            Metric::UniqueUsers,
            start,
            end,
            Granularity::Total,
            D::Unspecified,
        ),
    ];
    let first_previous = requests.len();
    for metric in KPIS {
        requests.push(metric_request(
            metric,
            prev_start,
            prev_end,
            Granularity::Total,
            D::Unspecified,
        ));
    }
    let metrics = futures::stream::iter(requests)
        .map(|request| get_metrics(&state, request))
        .buffered(DASHBOARD_PARALLEL)
        .try_collect::<Vec<_>>();
    let (answers, rules, (notifications, last_id)) = tokio::try_join!(
        metrics,
        rules_json(&state),
        notifications_json(&state, p.after_id, p.limit),
    )?;

    let (query, ..) = &answers[1];
    let buckets = query.bucket_starts();
    let n = buckets.len();
    let approximate = answers.iter().any(|(_, _, approximate)| *approximate);
    let series_of = |i: usize| single(&answers[i].1, n);
    let (by_type, events, pageviews, users, revenue, purchases) = (
        &answers[0].1,
        series_of(1),
        series_of(2),
        series_of(3),
        series_of(4),
        series_of(5),
    );
    let top = |i: usize| -> Vec<Value> {
        answers[i]
            .1
            .iter()
            .map(|s| json!({ "group": s.group, "total": s.total }))
            .collect()
    };
    let users_total = single(&answers[8].1, 1).total;
    let mut kpis = serde_json::Map::new();
    for (k, metric) in KPIS.into_iter().enumerate() {
        let value = match metric {
            Metric::Events => events.total,
            Metric::Pageviews => pageviews.total,
            Metric::UniqueUsers => users_total,
            Metric::Revenue => revenue.total,
            _ => purchases.total,
        };
        let previous = single(&answers[first_previous + k].1, 1).total;
        // No change can be stated against nothing: the page shows "—".
        let change = (previous != 0.0).then(|| (value - previous) / previous);
        kpis.insert(
            metric_name(metric).to_owned(),
            json!({ "value": value, "previous": previous, "change": change }),
        );
    }
    let values = |s: &SeriesValues| json!({ "total": s.total, "values": s.values });
    Ok(Json(json!({
        "range": range,
        "start": rfc3339(start),
        "end": rfc3339(end),
        "now": rfc3339(now),
        "granularity": granularity_name(granularity),
        "buckets": buckets.into_iter().map(rfc3339).collect::<Vec<_>>(),
        "partial": partial_buckets(query, now),
        "previous": { "start": rfc3339(prev_start), "end": rfc3339(prev_end) },
        "currency": state.dashboard.currency,
        "approximate": approximate,
        "kpis": kpis,
        "series": {
            "events_by_type": by_type.iter().map(series_json).collect::<Vec<_>>(),
            "events": values(&events),
            "pageviews": values(&pageviews),
            "unique_users": values(&users),
            "revenue": values(&revenue),
            "purchases": values(&purchases),
        },
        "top_pages": top(6),
        "top_products": top(7),
        "rules": rules,
        "notifications": notifications,
        "last_id": last_id,
    })))
}

/// Unknown `/api/…` paths answer JSON too.
pub async fn not_found() -> ApiError {
    ApiError(Error::NotFound(
        "no such API route; see README.md, \"JSON API\"".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ranges_end_at_the_next_minute() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T10:15:30.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let p = MetricsParams {
            range: Some("15m".into()),
            ..Default::default()
        };
        let (start, end, g) = resolve_range(&p, now).unwrap();
        assert_eq!(rfc3339(end), "2026-11-28T10:16:00Z");
        assert_eq!(rfc3339(start), "2026-11-28T10:01:00Z");
        assert_eq!(g, Granularity::Minute);
        // On a boundary the current minute is still inside the range.
        let on_boundary = DateTime::parse_from_rfc3339("2026-11-28T10:16:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let (_, end, _) = resolve_range(&p, on_boundary).unwrap();
        assert_eq!(rfc3339(end), "2026-11-28T10:17:00Z");
        let week = MetricsParams {
            range: Some("7d".into()),
            ..Default::default()
        };
        assert_eq!(resolve_range(&week, now).unwrap().2, Granularity::Hour);
    }

    #[test]
    fn explicit_ranges_default_to_one_total_bucket() {
        let p = MetricsParams {
            start: Some("2026-11-28T00:00:00Z".into()),
            end: Some("2026-11-29T00:00:00Z".into()),
            ..Default::default()
        };
        let (_, _, g) = resolve_range(&p, Utc::now()).unwrap();
        assert_eq!(g, Granularity::Total);
        let half = MetricsParams {
            start: Some("2026-11-28T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(resolve_range(&half, Utc::now()).is_err());
        let bad = MetricsParams {
            range: Some("2w".into()),
            ..Default::default()
        };
        assert!(resolve_range(&bad, Utc::now()).is_err());
    }

    #[test]
    fn names_accept_the_proto_spelling_too() {
        assert_eq!(
            parse_metric("METRIC_REVENUE").unwrap(),
            proto::Metric::Revenue
        );
        assert_eq!(parse_metric("pageviews").unwrap(), proto::Metric::Pageviews);
        assert!(parse_metric("clicks").is_err());
        assert_eq!(
            parse_dimension("DIMENSION_PAGE_URL").unwrap(),
            proto::Dimension::PageUrl
        );
        assert_eq!(parse_granularity("hour").unwrap(), Granularity::Hour);
    }
}
