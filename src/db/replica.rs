//! Reads from a PostgreSQL streaming replica, without losing read-your-writes.
//!
//! After every committed ingest batch the writer records the primary's
//! flushed WAL position (`pg_current_wal_flush_lsn()`, which the commit
//! record is behind, since a commit returns only once flushed) in this
//! instance's [`WriteLsn`]. Before a read, [`ReadPools::connection`] waits
//! (bounded) until the replica has replayed at least that far, so the read's
//! snapshot contains every event this instance has acknowledged; if the
//! replica is further behind, fails, or is not in recovery at all, the read
//! goes to the primary. Across instances the replica is as fresh as its
//! replay lag: an event acknowledged by another instance is seen once
//! replayed.
//!
//! The query cache stays correct on a replica: the fold generation is read
//! in the same snapshot as the data, and a physical replica at generation
//! G holds exactly the primary's rollups of generation G.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{PgPool, PooledConnection, connection};
use crate::error::Result;

/// How often the replay position is polled while waiting.
const POLL: Duration = Duration::from_millis(2);

#[derive(QueryableByName)]
struct Lsn {
    #[diesel(sql_type = Nullable<BigInt>)]
    lsn: Option<i64>,
}

/// The primary's WAL position after this instance's last acknowledged
/// write, as bytes since `0/0`.
#[derive(Debug, Default)]
pub struct WriteLsn(AtomicU64);

impl WriteLsn {
    /// Reads the primary's flushed WAL position on `conn` (after a commit on
    /// it) and remembers it if it is the highest seen.
    pub async fn record(&self, conn: &mut AsyncPgConnection) -> Result<()> {
        let row: Lsn =
            diesel::sql_query("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint AS lsn")
                .get_result(conn)
                .await?;
        if let Some(lsn) = row.lsn {
            self.0.fetch_max(lsn as u64, Ordering::AcqRel);
        }
        Ok(())
    }

    pub fn get(&self) -> u64 {
        AtomicU64::load(&self.0, Ordering::Acquire)
    }
}

/// Where a read went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRoute {
    /// No replica configured.
    Primary,
    /// The replica, caught up with this instance's writes.
    Replica,
    /// The primary, because the replica had not replayed this instance's
    /// last write within the wait, did not answer within it, or is not a
    /// replica at all.
    FallbackLag,
    /// The primary, because the replica could not be reached.
    FallbackError,
}

impl ReadRoute {
    pub fn label(self) -> &'static str {
        match self {
            ReadRoute::Primary => "primary",
            ReadRoute::Replica => "replica",
            ReadRoute::FallbackLag => "fallback_lag",
            ReadRoute::FallbackError => "fallback_error",
        }
    }
}

/// The pools reads may use: the primary's, and a replica's if configured.
pub struct ReadPools {
    primary: PgPool,
    replica: Option<PgPool>,
    /// This instance's last write, shared with the ingest writer.
    last_write: Arc<WriteLsn>,
    /// The highest replay position seen on the replica: replay only moves
    /// forward, so a read whose write is already below it needs no check.
    replayed: AtomicU64,
    /// Longest wait for the replica before falling back to the primary.
    wait: Duration,
}

impl ReadPools {
    /// Every read goes to the primary.
    pub fn primary_only(primary: PgPool) -> Self {
        Self::new(primary, None, Arc::default(), Duration::ZERO)
    }

    pub fn new(
        primary: PgPool,
        replica: Option<PgPool>,
        last_write: Arc<WriteLsn>,
        wait: Duration,
    ) -> Self {
        Self {
            primary,
            replica,
            last_write,
            replayed: AtomicU64::new(0),
            wait,
        }
    }

    /// A connection whose next snapshot holds every write this instance has
    /// acknowledged, and where it comes from.
    pub async fn connection(&self) -> Result<(PooledConnection, ReadRoute)> {
        let Some(replica) = &self.replica else {
            return Ok((connection(&self.primary).await?, ReadRoute::Primary));
        };
        let target = self.last_write.get();
        // Bounded as a whole: an unresponsive replica (a connect that hangs)
        // costs a read no more than a lagging one.
        match tokio::time::timeout(self.wait, self.caught_up(replica, target)).await {
            Ok(Ok(Some(conn))) => Ok((conn, ReadRoute::Replica)),
            Ok(Ok(None)) | Err(_) => Ok((connection(&self.primary).await?, ReadRoute::FallbackLag)),
            Ok(Err(error)) => {
                tracing::debug!(%error, "replica unavailable; reading from the primary");
                Ok((connection(&self.primary).await?, ReadRoute::FallbackError))
            }
        }
    }

    /// A replica connection once it has replayed `target`, or `None` after
    /// the wait.
    async fn caught_up(&self, replica: &PgPool, target: u64) -> Result<Option<PooledConnection>> {
        let mut conn = connection(replica).await?;
        // `AtomicU64::load` spelled out: diesel's `RunQueryDsl::load` would win.
        if AtomicU64::load(&self.replayed, Ordering::Acquire) >= target {
            return Ok(Some(conn));
        }
        let started = Instant::now();
        loop {
            let row: Lsn = diesel::sql_query(
                "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint AS lsn",
            )
            .get_result(&mut *conn)
            .await?;
            // NULL: the server is not in recovery, so not our replica.
            let Some(replayed) = row.lsn else {
                return Ok(None);
            };
            let replayed = replayed as u64;
            self.replayed.fetch_max(replayed, Ordering::AcqRel);
            if replayed >= target {
                return Ok(Some(conn));
            }
            if started.elapsed() >= self.wait {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
