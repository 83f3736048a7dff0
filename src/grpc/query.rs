//! `pulse.v1.QueryService`.
//!
//! Every answer runs within the query budget (`--db-query-timeout`): when
//! it is spent, the statement is cancelled on the server (PostgreSQL's
//! cancel request), the connection is discarded rather than returned to the
//! pool (a late cancel must not hit its next user), and the call is refused
//! with `RESOURCE_EXHAUSTED`. The outcome is decided by Pulse's own timer,
//! not by reading the database error: diesel-async keeps no SQLSTATE for
//! `query_canceled` (57014), and error texts are not an interface. The
//! query pool's server-side `statement_timeout` is a backstop just after
//! the budget.

use std::future::Future;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::convert;
use super::proto::query_service_server::QueryService;
use super::proto::{self, GetMetricsRequest, GetMetricsResponse, Point, Series};
use std::sync::Arc;

use crate::db::PgPool;
use crate::db::replica::{ReadPools, ReadRoute};
use crate::domain::metric::{Dimension, Filter, Granularity, Metric, MetricQuery, SeriesValues};
use crate::error::Error;
use crate::query::Engine;
use crate::telemetry::Metrics;

/// Serves metric queries.
#[derive(Clone)]
pub struct QueryApi {
    /// The primary, and a streaming replica if configured.
    reads: Arc<ReadPools>,
    /// Answers queries, with the rollup buckets it caches (never stale:
    /// see `query/cache.rs`).
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    /// Longest `filter.page_url` accepted (the ingest limit).
    max_string_bytes: usize,
    /// Longest time one answer may spend on the database.
    budget: Duration,
}

/// How long the cancel request of an over-budget query may take to send.
const CANCEL_WAIT: Duration = Duration::from_secs(1);

impl QueryApi {
    pub fn new(
        pool: PgPool,
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        max_string_bytes: usize,
    ) -> Self {
        Self {
            reads: Arc::new(ReadPools::primary_only(pool)),
            engine,
            metrics,
            max_string_bytes,
            budget: Duration::from_secs(2),
        }
    }

    /// Sets the query budget (`--db-query-timeout`).
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// Sends reads through `reads` (a replica, with read-your-writes).
    pub fn with_reads(mut self, reads: Arc<ReadPools>) -> Self {
        self.reads = reads;
        self
    }
}

/// `work`'s output, or `None` once `budget` is spent, after asking
/// PostgreSQL to cancel the running statement.
async fn within_budget<T>(
    work: impl Future<Output = T>,
    budget: Duration,
    cancel: tokio_postgres::CancelToken,
) -> Option<T> {
    match tokio::time::timeout(budget, work).await {
        Ok(done) => Some(done),
        Err(_) => {
            if let Ok(Err(error)) =
                tokio::time::timeout(CANCEL_WAIT, cancel.cancel_query(tokio_postgres::NoTls)).await
            {
                tracing::warn!(%error, "could not cancel an over-budget query");
            }
            None
        }
    }
}

impl TryFrom<i32> for Metric {
    type Error = Error;

    fn try_from(value: i32) -> Result<Self, Error> {
        match proto::Metric::try_from(value) {
            Ok(proto::Metric::Events) => Ok(Metric::Events),
            Ok(proto::Metric::UniqueUsers) => Ok(Metric::UniqueUsers),
            Ok(proto::Metric::Pageviews) => Ok(Metric::Pageviews),
            Ok(proto::Metric::Purchases) => Ok(Metric::Purchases),
            Ok(proto::Metric::Revenue) => Ok(Metric::Revenue),
            Ok(proto::Metric::Quantity) => Ok(Metric::Quantity),
            Ok(proto::Metric::Unspecified) => Err(Error::InvalidArgument(
                "metric is required (METRIC_EVENTS, METRIC_UNIQUE_USERS, METRIC_PAGEVIEWS, METRIC_PURCHASES, METRIC_REVENUE or METRIC_QUANTITY)".into(),
            )),
            Err(_) => Err(Error::InvalidArgument(format!("metric {value} is not a known Metric"))),
        }
    }
}

fn granularity(value: i32) -> Result<Granularity, Error> {
    match proto::Granularity::try_from(value) {
        Ok(proto::Granularity::Minute) => Ok(Granularity::Minute),
        Ok(proto::Granularity::Hour) => Ok(Granularity::Hour),
        Ok(proto::Granularity::Day) => Ok(Granularity::Day),
        Ok(proto::Granularity::Total) => Ok(Granularity::Total),
        Ok(proto::Granularity::Unspecified) => Err(Error::InvalidArgument(
            "granularity is required (GRANULARITY_MINUTE, GRANULARITY_HOUR, GRANULARITY_DAY or GRANULARITY_TOTAL)".into(),
        )),
        Err(_) => Err(Error::InvalidArgument(format!("granularity {value} is not a known Granularity"))),
    }
}

fn dimension(value: i32) -> Result<Dimension, Error> {
    match proto::Dimension::try_from(value) {
        Ok(proto::Dimension::Unspecified) => Ok(Dimension::None),
        Ok(proto::Dimension::EventType) => Ok(Dimension::EventType),
        Ok(proto::Dimension::PageUrl) => Ok(Dimension::PageUrl),
        Ok(proto::Dimension::ProductId) => Ok(Dimension::ProductId),
        Err(_) => Err(Error::InvalidArgument(format!(
            "group_by {value} is not a known Dimension"
        ))),
    }
}

/// Converts and validates a request at the edge.
pub fn metric_query(
    request: GetMetricsRequest,
    max_string_bytes: usize,
) -> Result<MetricQuery, Error> {
    let metric = Metric::try_from(request.metric)?;
    let time = |field: &str, ts: Option<prost_types::Timestamp>| {
        let ts = ts.ok_or_else(|| Error::InvalidArgument(format!("{field} is required")))?;
        convert::timestamp(&ts)
            .ok_or_else(|| Error::InvalidArgument(format!("{field} is out of range")))
    };
    let start = time("start", request.start)?;
    let end = time("end", request.end)?;
    let filter = request.filter.unwrap_or_default();
    let filter = Filter::new(
        filter.event_types,
        filter.page_url,
        filter.product_id,
        filter.user_id,
        max_string_bytes,
    )?;
    MetricQuery::new(
        metric,
        start,
        end,
        granularity(request.granularity)?,
        filter,
        dimension(request.group_by)?,
        request.limit,
    )
}

impl QueryApi {
    /// Answers a validated query: the one path of GetMetrics and of the
    /// dashboard's JSON API (`http/api.rs`), so both always agree. Returns
    /// the series, in `query.bucket_starts()` order, and `approximate`.
    pub async fn answer(&self, query: &MetricQuery) -> Result<(Vec<SeriesValues>, bool), Error> {
        let (mut conn, route) = self.reads.connection().await?;
        if route != ReadRoute::Primary {
            self.metrics.count_replica_read(route.label());
        }
        let cancel = conn.cancel_token();
        let answered = within_budget(self.engine.answer(&mut conn, query), self.budget, cancel).await;
        let Some(answered) = answered else {
            // Cancelled: a cancel that arrives late would hit whatever the
            // connection runs next, so it is closed, not pooled.
            drop(deadpool::managed::Object::take(conn));
            self.metrics.queries_over_budget.inc();
            return Err(Error::ResourceExhausted(format!(
                "the query needed more than its budget of {} ms on the database \
                 (PULSE_DB_QUERY_TIMEOUT) and was cancelled: narrow the time range or \
                 the filter, or ask for a coarser granularity",
                self.budget.as_millis()
            )));
        };
        let answer = answered?;
        drop(conn);
        self.metrics.count_query_cache(answer.cache.label());
        Ok((answer.series, answer.approximate))
    }

    /// Longest `filter.page_url` this API accepts.
    pub fn max_string_bytes(&self) -> usize {
        self.max_string_bytes
    }
}

#[tonic::async_trait]
impl QueryService for QueryApi {
    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let query = metric_query(request.into_inner(), self.max_string_bytes)?;
        let (series, approximate) = self.answer(&query).await?;
        let starts: Vec<prost_types::Timestamp> = query
            .bucket_starts()
            .into_iter()
            .map(convert::to_timestamp)
            .collect();
        let series = series
            .into_iter()
            .map(|s| Series {
                group: s.group,
                points: starts
                    .iter()
                    .zip(s.values)
                    .map(|(start, value)| Point {
                        bucket_start: Some(*start),
                        value,
                    })
                    .collect(),
                total: s.total,
            })
            .collect();
        Ok(Response::new(GetMetricsResponse {
            series,
            approximate,
        }))
    }
}
