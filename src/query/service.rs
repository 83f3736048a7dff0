//! [`Queries`]: the one entry point from a validated [`MetricQuery`] to its
//! answer, shared by gRPC `GetMetrics` (`grpc/query.rs`) and the dashboard's
//! JSON API (`http/api.rs`), which only convert their request into a
//! [`MetricQuery`] and the answer back.
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
use std::sync::Arc;
use std::time::Duration;

use super::Engine;
use crate::db::PgPool;
use crate::db::replica::{ReadPools, ReadRoute};
use crate::domain::metric::{MetricQuery, SeriesValues};
use crate::error::{Error, Result};
use crate::telemetry::Telemetry;

/// Answers metric queries within the budget; cheap to clone.
#[derive(Clone)]
pub struct Queries {
    /// The primary, and a streaming replica if configured.
    reads: Arc<ReadPools>,
    /// Answers queries, with the rollup buckets it caches (never stale:
    /// see `query/cache.rs`).
    engine: Arc<Engine>,
    telemetry: Arc<Telemetry>,
    /// Longest `filter.page_url` accepted (the ingest limit), which the
    /// transports pass to `Filter::new`.
    max_string_bytes: usize,
    /// Longest time one answer may spend on the database.
    budget: Duration,
}

/// How long the cancel request of an over-budget query may take to send.
const CANCEL_WAIT: Duration = Duration::from_secs(1);

impl Queries {
    pub fn new(
        pool: PgPool,
        engine: Arc<Engine>,
        telemetry: Arc<Telemetry>,
        max_string_bytes: usize,
    ) -> Self {
        Self {
            reads: Arc::new(ReadPools::primary_only(pool)),
            engine,
            telemetry,
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

    /// Longest `filter.page_url` the transports accept.
    pub fn max_string_bytes(&self) -> usize {
        self.max_string_bytes
    }

    /// Answers a validated query: the series, in `query.bucket_starts()`
    /// order, and `approximate`.
    pub async fn answer(&self, query: &MetricQuery) -> Result<(Vec<SeriesValues>, bool)> {
        let (mut conn, route) = self.reads.connection().await?;
        if route != ReadRoute::Primary {
            self.telemetry.count_replica_read(route.label());
        }
        let cancel = conn.cancel_token();
        let answered =
            within_budget(self.engine.answer(&mut conn, query), self.budget, cancel).await;
        let Some(answered) = answered else {
            // Cancelled: a cancel that arrives late would hit whatever the
            // connection runs next, so it is closed, not pooled.
            drop(deadpool::managed::Object::take(conn));
            self.telemetry.queries_over_budget.inc();
            return Err(Error::ResourceExhausted(format!(
                "the query needed more than its budget of {} ms on the database \
                 (PULSE_DB_QUERY_TIMEOUT) and was cancelled: narrow the time range or \
                 the filter, or ask for a coarser granularity",
                self.budget.as_millis()
            )));
        };
        let answer = answered?;
        drop(conn);
        self.telemetry.count_query_cache(answer.cache.label());
        Ok((answer.series, answer.approximate))
    }
}

/// `work`'s output, or `None` once `budget` is spent, after asking
/// PostgreSQL to cancel the running statement.
async fn within_budget<T>(
    work: impl Future<Output = T>,
    budget: Duration,
    cancel: tokio_postgres::CancelToken,
) -> Option<T> {
    if let Ok(done) = tokio::time::timeout(budget, work).await {
        Some(done)
    } else {
        if let Ok(Err(error)) =
            tokio::time::timeout(CANCEL_WAIT, cancel.cancel_query(tokio_postgres::NoTls)).await
        {
            tracing::warn!(%error, "could not cancel an over-budget query");
        }
        None
    }
}
