//! `pulse.v1.QueryService`.

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
}

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
        }
    }

    /// Sends reads through `reads` (a replica, with read-your-writes).
    pub fn with_reads(mut self, reads: Arc<ReadPools>) -> Self {
        self.reads = reads;
        self
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
        let answer = self.engine.answer(&mut conn, query).await?;
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
