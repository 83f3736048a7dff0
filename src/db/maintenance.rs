//! SQL of the scheduled maintenance jobs (`jobs.rs` schedules them):
//! retention of raw events and `VACUUM (ANALYZE)` of the hot tables.
//!
//! Each job runs on a session of its own, not a pooled connection: the job
//! holds a session-level advisory lock for the whole run (retention is many
//! transactions, and VACUUM cannot run inside one), and closing the session
//! releases the lock even if the run failed half-way. Such a session has no
//! `statement_timeout`: a VACUUM of a large table may take minutes.
//!
//! Retention never blocks ingest: each batch is one short statement that
//! deletes at most `batch` events it could lock at once (`FOR UPDATE SKIP
//! LOCKED`), together with their details, and takes only the row-exclusive
//! table lock that inserts take too. Rollups are never touched; what a
//! minute of a page or product needs once its raw events are gone moves to
//! the `retired_*` tables in the same statement.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use crate::error::{Error, Result};

/// Advisory lock key of the retention job (the fold is `…01`, alert
/// notifications `…02`, the alert evaluator `…03`).
pub const RETENTION_LOCK: i64 = 0x5075_6c73_6504;
/// Advisory lock key of the VACUUM job.
pub const VACUUM_LOCK: i64 = 0x5075_6c73_6505;

/// The tables whose dead rows and statistics matter for ingest and queries.
/// The delta tables are vacuumed after every fold (`rollups::vacuum_deltas`).
const HOT_TABLES: &str = "events, pageviews, purchases, users, rollup_counts, rollup_sets, \
     dimension_values, alert_states";

/// Rows one retention batch deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct Deleted {
    #[diesel(sql_type = BigInt)]
    pub events: i64,
    #[diesel(sql_type = BigInt)]
    pub pageviews: i64,
    #[diesel(sql_type = BigInt)]
    pub purchases: i64,
}

impl std::ops::AddAssign for Deleted {
    fn add_assign(&mut self, other: Self) {
        self.events += other.events;
        self.pageviews += other.pageviews;
        self.purchases += other.purchases;
    }
}

/// Opens the session a job runs on, named `pulse-<job>` in
/// `pg_stat_activity`, with server-side keepalives so a lock held by a
/// vanished host is released within seconds, and a check for a closed
/// client during long statements, so a VACUUM cut short by shutdown stops
/// (and frees its lock) within a second instead of running to its end.
pub async fn open_job_session(url: &str, job: &str) -> Result<AsyncPgConnection> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| Error::unavailable("cannot connect to PostgreSQL", e))?;
    // `job` is one of our constants, never client input.
    conn.batch_execute(&format!(
        "SET application_name = 'pulse-{job}'; SET statement_timeout = 0;
         SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3;
         SET client_connection_check_interval = 1000"
    ))
    .await?;
    Ok(conn)
}

/// Takes the session-level advisory lock `key` if no other session holds it.
pub async fn try_lock(conn: &mut AsyncPgConnection, key: i64) -> Result<bool> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = Bool)]
        locked: bool,
    }
    let row: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<BigInt, _>(key)
        .get_result(conn)
        .await?;
    Ok(row.locked)
}

/// Deletes up to `batch` events with `timestamp < cutoff` (found through
/// the `events_timestamp` index), and their pageview and purchase rows, in one
/// statement. Rows another transaction holds are skipped, left for the next
/// batch or run. `cutoff` is minute-aligned by the caller, so whole minutes
/// go at once and every minute either has all its raw events or none.
///
/// The same statement moves the minute counts and users of the deleted
/// pageviews and purchases, per page and product, into `retired_counts`
/// and `retired_users`: minutes older than the minute horizon are read from
/// raw events and those rows together (see that migration).
pub async fn delete_expired_batch(
    conn: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<Deleted> {
    // The details are deleted explicitly (a hash join on the doomed ids) so
    // the statement can count them; the cascade then finds nothing left.
    let deleted: Deleted = diesel::sql_query(
        r#"WITH doomed AS (
               SELECT event_id, date_trunc('minute', "timestamp", 'UTC') AS minute, event_type_id, user_id
               FROM events WHERE "timestamp" < $1
               LIMIT $2 FOR UPDATE SKIP LOCKED
           ),
           pv AS (DELETE FROM pageviews p USING doomed d WHERE p.event_id = d.event_id
                  RETURNING d.minute, d.event_type_id, d.user_id, p.page_url),
           pu AS (DELETE FROM purchases p USING doomed d WHERE p.event_id = d.event_id
                  RETURNING d.minute, d.event_type_id, d.user_id, p.product_id, p.quantity, p.amount),
           ev AS (DELETE FROM events e USING doomed d WHERE e.event_id = d.event_id RETURNING 1),
           gone AS (
               SELECT 1::int2 AS dimension, pv.minute, v.value_id, pv.event_type_id, pv.user_id,
                      0 AS quantity, 0::numeric AS amount
               FROM pv JOIN dimension_values v ON v.dimension = 1 AND v.value = pv.page_url
               UNION ALL
               SELECT 2::int2, pu.minute, v.value_id, pu.event_type_id, pu.user_id, pu.quantity, pu.amount
               FROM pu JOIN dimension_values v ON v.dimension = 2 AND v.value = pu.product_id
           ),
           rc AS (
               INSERT INTO retired_counts AS t (dimension, minute, value_id, event_type_id, events, quantity, revenue)
               SELECT dimension, minute, value_id, event_type_id, count(*), sum(quantity), sum(amount)
               FROM gone GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
               ON CONFLICT (dimension, minute, value_id, event_type_id) DO UPDATE
                   SET events = t.events + EXCLUDED.events,
                       quantity = t.quantity + EXCLUDED.quantity,
                       revenue = t.revenue + EXCLUDED.revenue
           ),
           ru AS (
               INSERT INTO retired_users (dimension, minute, value_id, event_type_id, user_id)
               SELECT DISTINCT dimension, minute, value_id, event_type_id, user_id
               FROM gone WHERE user_id IS NOT NULL ORDER BY 1, 2, 3, 4, 5
               ON CONFLICT DO NOTHING
           )
           SELECT (SELECT count(*) FROM ev) AS events,
                  (SELECT count(*) FROM pv) AS pageviews,
                  (SELECT count(*) FROM pu) AS purchases"#,
    )
    .bind::<Timestamptz, _>(cutoff)
    .bind::<BigInt, _>(batch)
    .get_result(conn)
    .await?;
    Ok(deleted)
}

/// `VACUUM (ANALYZE)` of the hot tables; a table someone holds a
/// conflicting lock on is skipped this time.
pub async fn vacuum_hot_tables(conn: &mut AsyncPgConnection) -> Result<()> {
    conn.batch_execute(&format!("VACUUM (ANALYZE, SKIP_LOCKED) {HOT_TABLES}"))
        .await?;
    Ok(())
}
