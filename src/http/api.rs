//! The dashboard's JSON API, `/api/v1/…` (documented in README.md, "JSON API").
//!
//! A thin edge over the code the gRPC services run: metric requests become
//! a [`MetricQuery`] (validated by the domain, as `GetMetrics`' are) and are
//! answered by [`Queries::answer`](crate::query::Queries::answer), exactly as
//! `GetMetrics`; alert rules, their states
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
use crate::domain::alert::{AlertRule, Notification, Phase};
use crate::domain::metric::{
    Dimension, Filter, Granularity, Metric, MetricQuery, SeriesValues, ceil_to,
};
use crate::error::Error;

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
        self.0.log_internal();
        let body = json!({
            "error": { "code": self.0.code_name(), "message": self.0.client_message() }
        });
        let mut response = (self.0.http_status(), Json(body)).into_response();
        if let Error::Throttled(exceeded) = &self.0 {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                exceeded.retry_after_seconds().into(),
            );
        }
        response
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

/// A name from the query string: the value's one spelling (`unique_users`),
/// in any case, with or without its gRPC prefix (`METRIC_UNIQUE_USERS`).
fn parse_name<T>(
    field: &str,
    prefix: &str,
    text: &str,
    parse: fn(&str) -> Option<T>,
    names: fn() -> String,
) -> Result<T, Error> {
    let name = text.to_ascii_lowercase();
    parse(name.strip_prefix(prefix).unwrap_or(&name)).ok_or_else(|| {
        Error::InvalidArgument(format!("{field} `{text}` is not one of {}", names()))
    })
}

fn parse_granularity(text: &str) -> Result<Granularity, Error> {
    parse_name(
        "granularity",
        "granularity_",
        text,
        Granularity::parse,
        Granularity::names,
    )
}

/// `group_by`: absent, empty or `unspecified` is no grouping.
fn parse_dimension(text: &str) -> Result<Dimension, Error> {
    if text.is_empty() || text.eq_ignore_ascii_case("unspecified") {
        return Ok(Dimension::None);
    }
    parse_name(
        "group_by",
        "dimension_",
        text,
        Dimension::parse,
        Dimension::names,
    )
}

fn parse_time(field: &str, text: &str) -> Result<DateTime<Utc>, Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::InvalidArgument(format!("{field} `{text}` is not RFC 3339: {e}")))
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
    let (start, end, default_granularity) = if let Some((start, end)) = explicit {
        (start, end, Granularity::Total)
    } else {
        let (span, granularity) = parse_range(p.range.as_deref().unwrap_or("1h"))?;
        let end = ceil_to(now + TimeDelta::milliseconds(1), 60);
        (end - span, end, granularity)
    };
    let granularity = match p.granularity.as_deref() {
        Some(text) => parse_granularity(text)?,
        None => default_granularity,
    };
    Ok((start, end, granularity))
}

/// `GET /api/v1/metrics`: GetMetrics over HTTP.
pub async fn get_metrics(
    State(state): State<HttpState>,
    params: Result<Query<MetricsParams>, QueryRejection>,
) -> ApiResult {
    let p = query_params(params)?;
    let metric = p
        .metric
        .as_deref()
        .ok_or_else(|| Error::InvalidArgument("metric is required".into()))?;
    let metric = parse_name("metric", "metric_", metric, Metric::parse, Metric::names)?;
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
    let filter = Filter::new(
        event_types,
        p.page_url.clone().unwrap_or_default(),
        p.product_id.clone().unwrap_or_default(),
        p.user_id.clone().unwrap_or_default(),
        state.query.max_string_bytes(),
    )?;
    let query = MetricQuery::new(
        metric,
        start,
        end,
        granularity,
        filter,
        group_by,
        p.limit.unwrap_or(0),
    )?;
    let (series, approximate) = state.query.answer(&query).await?;
    let buckets: Vec<String> = query.bucket_starts().into_iter().map(rfc3339).collect();
    let series: Vec<Value> = series.iter().map(series_json).collect();
    Ok(Json(json!({
        "metric": query.metric.as_str(),
        "start": rfc3339(query.start),
        "end": rfc3339(query.end),
        "granularity": query.granularity.as_str(),
        "group_by": p.group_by.as_deref().unwrap_or("none"),
        "approximate": approximate,
        "buckets": buckets,
        "series": series,
    })))
}

fn series_json(s: &SeriesValues) -> Value {
    json!({ "group": s.group, "total": s.total, "values": s.values })
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
        let phase = if spec.enabled {
            stored.map_or(Phase::Inactive, |s| s.phase).as_str()
        } else {
            "disabled"
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
            "metric": spec.metric.as_str(),
            "filter": filter_json(&spec.filter),
            "window_seconds": spec.window_seconds,
            "comparison": spec.comparison.as_str(),
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
        "state": n.state.as_str(),
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

/// One of the dashboard's GetMetrics queries: no filter, the top
/// [`DASHBOARD_TOP`] groups when grouped.
fn dashboard_query(
    metric: Metric,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    granularity: Granularity,
    group_by: Dimension,
) -> Result<MetricQuery, Error> {
    let limit = if group_by == Dimension::None {
        0
    } else {
        DASHBOARD_TOP
    };
    MetricQuery::new(
        metric,
        start,
        end,
        granularity,
        Filter::default(),
        group_by,
        limit,
    )
}

/// Where each panel's answer sits in [`dashboard_queries`]' list.
mod panel {
    pub const EVENTS_BY_TYPE: usize = 0;
    pub const EVENTS: usize = 1;
    pub const PAGEVIEWS: usize = 2;
    pub const UNIQUE_USERS: usize = 3;
    pub const REVENUE: usize = 4;
    pub const PURCHASES: usize = 5;
    pub const TOP_PAGES: usize = 6;
    pub const TOP_PRODUCTS: usize = 7;
    pub const USERS_TOTAL: usize = 8;
    /// The KPIs over the previous period, in `KPIS` order.
    pub const PREVIOUS: usize = 9;
}

/// Series over the range, top lists, then the KPIs' totals that the series
/// do not give (distinct users) and the previous period's, in [`panel`]
/// order.
fn dashboard_queries(
    range: (DateTime<Utc>, DateTime<Utc>),
    previous: (DateTime<Utc>, DateTime<Utc>),
    granularity: Granularity,
) -> Result<Vec<MetricQuery>, Error> {
    use Dimension as D;
    let mut queries = vec![
        dashboard_query(Metric::Events, range, granularity, D::EventType)?,
        dashboard_query(Metric::Events, range, granularity, D::None)?,
        dashboard_query(Metric::Pageviews, range, granularity, D::None)?,
        dashboard_query(Metric::UniqueUsers, range, granularity, D::None)?,
        dashboard_query(Metric::Revenue, range, granularity, D::None)?,
        dashboard_query(Metric::Purchases, range, granularity, D::None)?,
        dashboard_query(Metric::Pageviews, range, Granularity::Total, D::PageUrl)?,
        dashboard_query(Metric::Revenue, range, Granularity::Total, D::ProductId)?,
        dashboard_query(Metric::UniqueUsers, range, Granularity::Total, D::None)?,
    ];
    for metric in KPIS {
        queries.push(dashboard_query(
            metric,
            previous,
            Granularity::Total,
            D::None,
        )?);
    }
    Ok(queries)
}

/// The one series of an ungrouped answer (all zeros when nothing matched).
fn single(series: &[SeriesValues], buckets: usize) -> SeriesValues {
    series.first().cloned().unwrap_or_else(|| SeriesValues {
        group: String::new(),
        values: vec![0.0; buckets],
        total: 0.0,
    })
}

/// Each KPI's value, its value over the previous period and the change.
fn kpis_json(answers: &[Vec<SeriesValues>], buckets: usize) -> serde_json::Map<String, Value> {
    let total = |i: usize, n: usize| single(&answers[i], n).total;
    let mut kpis = serde_json::Map::new();
    for (k, metric) in KPIS.into_iter().enumerate() {
        let value = match metric {
            Metric::Events => total(panel::EVENTS, buckets),
            Metric::Pageviews => total(panel::PAGEVIEWS, buckets),
            Metric::UniqueUsers => total(panel::USERS_TOTAL, 1),
            Metric::Revenue => total(panel::REVENUE, buckets),
            _ => total(panel::PURCHASES, buckets),
        };
        let previous = total(panel::PREVIOUS + k, 1);
        // No change can be stated against nothing: the page shows "—".
        let change = (previous != 0.0).then(|| (value - previous) / previous);
        kpis.insert(
            metric.as_str().to_owned(),
            json!({ "value": value, "previous": previous, "change": change }),
        );
    }
    kpis
}

/// `GET /api/v1/dashboard`: every panel of the page in one answer, so a
/// refresh is one request. Each number is a GetMetrics answer computed by
/// [`Queries::answer`](crate::query::Queries::answer) (the gRPC path),
/// rules and notifications are those of `/alerts/rules` and
/// `/alerts/notifications`; each KPI also carries its value over the
/// previous period of the same length.
pub async fn dashboard(
    State(state): State<HttpState>,
    params: Result<Query<DashboardParams>, QueryRejection>,
) -> ApiResult {
    let p = query_params(params)?;
    let now = Utc::now();
    let (start, end, granularity, range) = dashboard_range(&p, now)?;
    let (prev_start, prev_end) = (start - (end - start), start);
    let queries = dashboard_queries((start, end), (prev_start, prev_end), granularity)?;
    let answers = futures::stream::iter(queries.clone())
        .map(|query| {
            let queries = state.query.clone();
            async move { queries.answer(&query).await }
        })
        .buffered(DASHBOARD_PARALLEL)
        .try_collect::<Vec<_>>();
    let (answers, rules, (notifications, last_id)) = tokio::try_join!(
        answers,
        rules_json(&state),
        notifications_json(&state, p.after_id, p.limit),
    )?;
    let approximate = answers.iter().any(|(_, approximate)| *approximate);
    let answers: Vec<Vec<SeriesValues>> = answers.into_iter().map(|(s, _)| s).collect();

    let query = &queries[panel::EVENTS];
    let buckets = query.bucket_starts();
    let n = buckets.len();
    let values = |i: usize| {
        let s = single(&answers[i], n);
        json!({ "total": s.total, "values": s.values })
    };
    let top = |i: usize| -> Vec<Value> {
        answers[i]
            .iter()
            .map(|s| json!({ "group": s.group, "total": s.total }))
            .collect()
    };
    Ok(Json(json!({
        "range": range,
        "start": rfc3339(start),
        "end": rfc3339(end),
        "now": rfc3339(now),
        "granularity": granularity.as_str(),
        "buckets": buckets.into_iter().map(rfc3339).collect::<Vec<_>>(),
        "partial": partial_buckets(query, now),
        "previous": { "start": rfc3339(prev_start), "end": rfc3339(prev_end) },
        "currency": state.dashboard.currency,
        "approximate": approximate,
        "kpis": kpis_json(&answers, n),
        "series": {
            "events_by_type": answers[panel::EVENTS_BY_TYPE].iter().map(series_json).collect::<Vec<_>>(),
            "events": values(panel::EVENTS),
            "pageviews": values(panel::PAGEVIEWS),
            "unique_users": values(panel::UNIQUE_USERS),
            "revenue": values(panel::REVENUE),
            "purchases": values(panel::PURCHASES),
        },
        "top_pages": top(panel::TOP_PAGES),
        "top_products": top(panel::TOP_PRODUCTS),
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
        let metric = |t| parse_name("metric", "metric_", t, Metric::parse, Metric::names);
        assert_eq!(metric("METRIC_REVENUE").unwrap(), Metric::Revenue);
        assert_eq!(metric("pageviews").unwrap(), Metric::Pageviews);
        assert!(metric("clicks").is_err());
        assert_eq!(
            parse_dimension("DIMENSION_PAGE_URL").unwrap(),
            Dimension::PageUrl
        );
        assert_eq!(parse_dimension("").unwrap(), Dimension::None);
        assert_eq!(parse_granularity("hour").unwrap(), Granularity::Hour);
    }
}
