//! Rollup upkeep: folding the deltas that ingest appends into the minute,
//! hour and day rollup tables.
//!
//! One fold is one transaction: `DELETE … RETURNING` takes every committed
//! delta row and the same statement adds it to the rollups. A query running
//! at the same time sees either the deltas or the rollups that replaced
//! them, never both or neither, because both live in one snapshot. Deltas
//! committed after the fold's snapshot are left for the next fold, so
//! nothing depends on commit order (no watermark).
//!
//! User sets are Roaring bitmaps, merged in Rust: the fold reads the
//! affected sets `FOR UPDATE`, ORs the new users in and writes them back.
//! A transaction-scoped advisory lock keeps folds from overlapping when
//! several Pulse processes share the database.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Int2, Int4, Int8, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use roaring::RoaringTreemap;

use crate::domain::metric::{RESOLUTIONS, floor_to};
use crate::error::{Error, Result};

/// The advisory lock key of the fold (any constant unique to Pulse).
const FOLD_LOCK: i64 = 0x5075_6c73_6501;

/// The event type id of user sets that cover every type.
pub const ANY_TYPE: i16 = 0;

/// What one fold moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FoldOutcome {
    /// Delta rows moved into rollups.
    pub delta_rows: u64,
    /// False when another process held the fold lock.
    pub ran: bool,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Moves up to `$1` count deltas into their minute, hour and day rows, and
/// returns the distinct minutes they touched (with the number of delta
/// rows moved on every row).
const FOLD_COUNTS: &str = r"
WITH moved AS (
    DELETE FROM rollup_count_deltas
    WHERE ctid = ANY (ARRAY (SELECT ctid FROM rollup_count_deltas LIMIT $1))
    RETURNING minute, dimension, value_id, event_type_id, events, quantity, revenue
), agg AS (
    SELECT r.res, date_bin(make_interval(secs => r.res), m.minute, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
           m.dimension, m.value_id, m.event_type_id,
           sum(m.events)::bigint AS events, sum(m.quantity)::bigint AS quantity, sum(m.revenue) AS revenue
    FROM moved m CROSS JOIN (VALUES (60), (3600), (86400)) AS r(res)
    -- Minute rows of pages and products only within the horizon.
    WHERE r.res <> 60 OR m.dimension = 0 OR m.minute >= $2
    GROUP BY 1, 2, 3, 4, 5
), up AS (
    INSERT INTO rollup_counts AS t (resolution, bucket, dimension, value_id, event_type_id, events, quantity, revenue)
    SELECT * FROM agg ORDER BY 1, 3, 2, 4, 5
    ON CONFLICT (resolution, dimension, bucket, value_id, event_type_id) DO UPDATE
        SET events = t.events + EXCLUDED.events,
            quantity = t.quantity + EXCLUDED.quantity,
            revenue = t.revenue + EXCLUDED.revenue
)
SELECT minute, (SELECT count(*) FROM moved) AS n FROM moved GROUP BY minute
";

/// Most delta rows one fold moves per table: a fold's memory and
/// transaction stay bounded whatever piled up (a history import, a
/// migration's seed); the next fold takes the rest.
pub const FOLD_BATCH: i64 = 200_000;

/// Distinct minutes up to which a fold logs minutes; beyond, only hours.
const LOGGED_MINUTES: usize = 1_000;

/// Folds up to [`FOLD_BATCH`] committed deltas of each table into the
/// rollups, in one transaction, and logs what it touched.
pub async fn fold(conn: &mut AsyncPgConnection) -> Result<FoldOutcome> {
    conn.transaction::<_, Error, _>(async |conn| {
        let lock: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
            .bind::<BigInt, _>(FOLD_LOCK)
            .get_result(conn)
            .await?;
        if !lock.locked {
            return Ok(FoldOutcome::default());
        }
        let delta_rows = fold_pending(conn, FOLD_BATCH).await?;
        Ok(FoldOutcome {
            delta_rows,
            ran: true,
        })
    })
    .await
}

/// Reclaims the rows the last fold deleted from the delta tables. Each fold
/// empties them, so without this every later fold, and every query's read of
/// pending deltas, would wade through all the dead rows since autovacuum last
/// ran (measured: a page fold went from 55 ms to 187 ms under load). Runs
/// outside any transaction; cheap, because the tables are nearly empty.
/// `TRUNCATE false`: shrinking the file would take an ACCESS EXCLUSIVE lock
/// that stalls ingest and queries; the emptied pages are reused instead.
pub async fn vacuum_deltas(conn: &mut AsyncPgConnection) -> Result<()> {
    diesel::sql_query(
        "VACUUM (SKIP_LOCKED, TRUNCATE false) rollup_count_deltas, rollup_set_deltas",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Shrinks a delta table whose file a backlog left large (a history import
/// can leave hundreds of MB that every query's read of pending deltas
/// scans, although the rows are gone). Every live read scans the whole
/// file: 13 MB of empty pages after a 2 M-event import cost each read
/// ~2 ms, and 1,000 alert rules a 2.2 s tick. So when the file is over
/// 1 MB and under a tenth full (live rows × 1,000 bytes below its size;
/// a row takes ~90), and under 50,000 rows, the rows are copied aside, the
/// table is truncated and the rows put back, in one short transaction. A
/// table that steady traffic keeps full is left alone. The ACCESS
/// EXCLUSIVE lock is waited for at most 50 ms (ingest and queries queue
/// behind it meanwhile); if it is not granted (SQLSTATE 55P03, caught in
/// the block), nothing happens until the next try.
pub async fn shrink_deltas(conn: &mut AsyncPgConnection) -> Result<()> {
    for table in ["rollup_count_deltas", "rollup_set_deltas"] {
        // `table` is one of the two constants above, never input.
        diesel::sql_query(format!(
            "DO $$
             BEGIN
               IF pg_relation_size('{table}') > 1048576
                  AND (SELECT count(*) FROM {table}) * 1000 < pg_relation_size('{table}') THEN
                 PERFORM set_config('lock_timeout', '50ms', true);
                 LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;
                 IF (SELECT count(*) FROM {table}) < 50000 THEN
                   CREATE TEMP TABLE pulse_keep ON COMMIT DROP AS SELECT * FROM {table};
                   TRUNCATE {table};
                   INSERT INTO {table} SELECT * FROM pulse_keep;
                 END IF;
               END IF;
             EXCEPTION WHEN lock_not_available THEN NULL;
             END $$"
        ))
        .execute(conn)
        .await?;
    }
    Ok(())
}

#[derive(QueryableByName)]
struct TouchedMinute {
    #[diesel(sql_type = Timestamptz)]
    minute: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The body of a fold, inside the caller's transaction: moves up to `batch`
/// deltas of each table, bumps the generation and logs the touched minutes
/// (or hours, when there are many) under it.
async fn fold_pending(conn: &mut AsyncPgConnection, batch: i64) -> Result<u64> {
    let started = std::time::Instant::now();
    let horizon = minute_horizon(conn).await?;
    let touched: Vec<TouchedMinute> = diesel::sql_query(FOLD_COUNTS)
        .bind::<BigInt, _>(batch)
        .bind::<Timestamptz, _>(horizon)
        .load(conn)
        .await?;
    let mut delta_rows = <[TouchedMinute]>::first(&touched).map_or(0, |t| t.n as u64);
    let mut minutes: Vec<DateTime<Utc>> = touched.into_iter().map(|t| t.minute).collect();
    let counts_ms = started.elapsed().as_secs_f64() * 1e3;
    let (set_rows, set_minutes) = fold_sets(conn, batch, horizon).await?;
    tracing::debug!(
        count_rows = delta_rows,
        counts_ms,
        set_rows,
        sets_ms = started.elapsed().as_secs_f64() * 1e3 - counts_ms,
        "fold steps"
    );
    delta_rows += set_rows;
    minutes.extend(set_minutes);
    if delta_rows > 0 {
        minutes.sort_unstable();
        minutes.dedup();
        let mut hours: Vec<DateTime<Utc>> = minutes.iter().map(|m| floor_to(*m, 3600)).collect();
        hours.dedup();
        if minutes.len() > LOGGED_MINUTES {
            minutes.clear();
        }
        log_fold(conn, false, &minutes, &hours).await?;
    }
    Ok(delta_rows)
}

/// The oldest minute whose page and product minute rows a fold writes now
/// (`rollup_state.dimension_minute_seconds` before the transaction's
/// `now()`): see the migration that introduced it, and `query::Engine`,
/// which reads older minutes of those dimensions from raw events.
async fn minute_horizon(conn: &mut AsyncPgConnection) -> Result<DateTime<Utc>> {
    #[derive(QueryableByName)]
    struct Horizon {
        #[diesel(sql_type = Timestamptz)]
        horizon: DateTime<Utc>,
    }
    let row: Horizon = diesel::sql_query(
        "SELECT now() - make_interval(secs => dimension_minute_seconds) AS horizon FROM rollup_state",
    )
    .get_result(conn)
    .await?;
    Ok(row.horizon)
}

/// Bumps the generation and records what changed under it; prunes log rows
/// far behind (a cache that needs them starts over). The query cache keys
/// on this: see `query/cache.rs`.
async fn log_fold(
    conn: &mut AsyncPgConnection,
    everything: bool,
    minutes: &[DateTime<Utc>],
    hours: &[DateTime<Utc>],
) -> Result<()> {
    diesel::sql_query(
        "WITH g AS (UPDATE rollup_state SET fold_generation = fold_generation + 1 RETURNING fold_generation),
              logged AS (INSERT INTO rollup_folds (generation, everything, minutes, hours)
                         SELECT fold_generation, $1, $2, $3 FROM g)
         DELETE FROM rollup_folds WHERE generation < (SELECT fold_generation FROM g) - $4",
    )
    .bind::<Bool, _>(everything)
    .bind::<Array<Timestamptz>, _>(minutes)
    .bind::<Array<Timestamptz>, _>(hours)
    .bind::<BigInt, _>(LOGGED_GENERATIONS)
    .execute(conn)
    .await?;
    Ok(())
}

/// Fold log rows kept (a process that falls further behind than this, e.g.
/// idle for hours under steady ingest, drops its cache once).
const LOGGED_GENERATIONS: i64 = 20_000;

/// Seeds the deltas of every event in `[$1, $2)` from the raw tables (after
/// registering its pages and products).
const SEED_DELTAS: [&str; 7] = [
    r#"INSERT INTO dimension_values (dimension, value)
       SELECT DISTINCT 1, p.page_url FROM pageviews p JOIN events e USING (event_id)
       WHERE e."timestamp" >= $1 AND e."timestamp" < $2 ORDER BY 2 ON CONFLICT DO NOTHING"#,
    r#"INSERT INTO dimension_values (dimension, value)
       SELECT DISTINCT 2, p.product_id FROM purchases p JOIN events e USING (event_id)
       WHERE e."timestamp" >= $1 AND e."timestamp" < $2 ORDER BY 2 ON CONFLICT DO NOTHING"#,
    r#"INSERT INTO rollup_count_deltas (minute, dimension, value_id, event_type_id, events, quantity, revenue)
       SELECT date_trunc('minute', e."timestamp", 'UTC'), 0, 0, e.event_type_id, count(*),
              coalesce(sum(p.quantity), 0), coalesce(sum(p.amount), 0)
       FROM events e LEFT JOIN purchases p USING (event_id)
       WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1, 4"#,
    r#"INSERT INTO rollup_count_deltas (minute, dimension, value_id, event_type_id, events, quantity, revenue)
       SELECT date_trunc('minute', e."timestamp", 'UTC'), 1, v.value_id, e.event_type_id, count(*), 0, 0
       FROM pageviews p JOIN events e USING (event_id)
       JOIN dimension_values v ON v.dimension = 1 AND v.value = p.page_url
       WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1, 3, 4"#,
    r#"INSERT INTO rollup_count_deltas (minute, dimension, value_id, event_type_id, events, quantity, revenue)
       SELECT date_trunc('minute', e."timestamp", 'UTC'), 2, v.value_id, e.event_type_id, count(*),
              sum(p.quantity), sum(p.amount)
       FROM purchases p JOIN events e USING (event_id)
       JOIN dimension_values v ON v.dimension = 2 AND v.value = p.product_id
       WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1, 3, 4"#,
    r#"INSERT INTO rollup_set_deltas (minute, dimension, value_id, event_type_id, user_id)
       SELECT DISTINCT date_trunc('minute', "timestamp", 'UTC'), 0, 0, event_type_id, user_id FROM events
       WHERE "timestamp" >= $1 AND "timestamp" < $2 AND user_id IS NOT NULL"#,
    r#"INSERT INTO rollup_set_deltas (minute, dimension, value_id, event_type_id, user_id)
       SELECT DISTINCT date_trunc('minute', e."timestamp", 'UTC'), d.dimension, v.value_id, e.event_type_id, e.user_id
       FROM events e
       JOIN (SELECT event_id, 1::int2 AS dimension, page_url AS value FROM pageviews
             UNION ALL SELECT event_id, 2::int2, product_id FROM purchases) d USING (event_id)
       JOIN dimension_values v ON v.dimension = d.dimension AND v.value = d.value
       WHERE e."timestamp" >= $1 AND e."timestamp" < $2 AND e.user_id IS NOT NULL"#,
];

#[derive(QueryableByName)]
struct Span {
    #[diesel(sql_type = diesel::sql_types::Nullable<Timestamptz>)]
    first: Option<DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<Timestamptz>)]
    last: Option<DateTime<Utc>>,
}

/// Rebuilds every rollup from the raw events, one day at a time, in one
/// transaction that holds a SHARE lock on `events`: ingest waits until it
/// commits (so no event is counted twice or missed), queries go on and see
/// the old rollups until then. `progress` is called after each day.
///
/// For operators after a manual fix of raw rows, and for data loaded around
/// Pulse (e.g. `psql \copy` in the benchmark). Raw events already deleted by
/// retention are lost from rebuilt rollups: rebuild only what raw data holds.
pub async fn rebuild(
    conn: &mut AsyncPgConnection,
    progress: &mut (dyn FnMut(DateTime<Utc>, u64) + Send),
) -> Result<u64> {
    conn.transaction::<_, Error, _>(async |conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<BigInt, _>(FOLD_LOCK)
            .execute(conn)
            .await?;
        diesel::sql_query("LOCK TABLE events IN SHARE MODE")
            .execute(conn)
            .await?;
        diesel::sql_query(
            "TRUNCATE rollup_counts, rollup_sets, rollup_count_deltas, rollup_set_deltas",
        )
        .execute(conn)
        .await?;
        let span: Span = diesel::sql_query(
            r#"SELECT min("timestamp") AS first, max("timestamp") AS last FROM events"#,
        )
        .get_result(conn)
        .await?;
        let mut total = 0;
        if let (Some(first), Some(last)) = (span.first, span.last) {
            let mut day = floor_to(first, 86400);
            while day <= last {
                let next = day + chrono::TimeDelta::days(1);
                for sql in SEED_DELTAS {
                    diesel::sql_query(sql)
                        .bind::<Timestamptz, _>(day)
                        .bind::<Timestamptz, _>(next)
                        .execute(conn)
                        .await?;
                }
                let mut rows = 0;
                loop {
                    let moved = fold_pending(conn, i64::MAX).await?;
                    rows += moved;
                    if moved == 0 {
                        break;
                    }
                }
                total += rows;
                progress(day, rows);
                day = next;
            }
        }
        log_fold(conn, true, &[], &[]).await?;
        Ok(total)
    })
    .await
}

#[derive(QueryableByName)]
struct SetDelta {
    #[diesel(sql_type = Timestamptz)]
    minute: DateTime<Utc>,
    #[diesel(sql_type = Int2)]
    dimension: i16,
    #[diesel(sql_type = Int4)]
    value_id: i32,
    #[diesel(sql_type = Int2)]
    event_type_id: i16,
    #[diesel(sql_type = Int8)]
    user_id: i64,
}

#[derive(QueryableByName)]
struct StoredSet {
    #[diesel(sql_type = Int4)]
    resolution: i32,
    #[diesel(sql_type = Int2)]
    dimension: i16,
    #[diesel(sql_type = Timestamptz)]
    bucket: DateTime<Utc>,
    #[diesel(sql_type = Int4)]
    value_id: i32,
    #[diesel(sql_type = Int2)]
    event_type_id: i16,
    #[diesel(sql_type = Bytea)]
    users: Vec<u8>,
}

/// A user set's key: (resolution, dimension, bucket, value, type).
type SetKey = (i32, i16, DateTime<Utc>, i32, i16);
type SetAdditions = BTreeMap<SetKey, RoaringTreemap>;

/// Moves up to `batch` set deltas into the bitmaps of their minute, hour
/// and day (and, for dimension 0, the any-type set). Returns the rows moved
/// and the minutes touched.
async fn fold_sets(
    conn: &mut AsyncPgConnection,
    batch: i64,
    horizon: DateTime<Utc>,
) -> Result<(u64, Vec<DateTime<Utc>>)> {
    let deltas: Vec<SetDelta> = diesel::sql_query(
        "DELETE FROM rollup_set_deltas
         WHERE ctid = ANY (ARRAY (SELECT ctid FROM rollup_set_deltas LIMIT $1))
         RETURNING minute, dimension, value_id, event_type_id, user_id",
    )
    .bind::<BigInt, _>(batch)
    .load(conn)
    .await?;
    if deltas.is_empty() {
        return Ok((0, Vec::new()));
    }
    let started = std::time::Instant::now();
    // Bitmap work is CPU-bound: keep it off the async worker threads, so a
    // fold never stalls the ingest and query tasks sharing them.
    let rows = deltas.len() as u64;
    let (mut additions, minutes) =
        tokio::task::spawn_blocking(move || group_set_deltas(&deltas, horizon))
            .await
            .map_err(|e| Error::internal("user-set task failed", e))??;

    let resolutions: Vec<i32> = additions.keys().map(|k| k.0).collect();
    let dimensions: Vec<i16> = additions.keys().map(|k| k.1).collect();
    let buckets: Vec<DateTime<Utc>> = additions.keys().map(|k| k.2).collect();
    let values: Vec<i32> = additions.keys().map(|k| k.3).collect();
    let types: Vec<i16> = additions.keys().map(|k| k.4).collect();
    let stored: Vec<StoredSet> = diesel::sql_query(
        "SELECT s.resolution, s.dimension, s.bucket, s.value_id, s.event_type_id, s.users
         FROM rollup_sets s
         JOIN unnest($1::int4[], $2::int2[], $3::timestamptz[], $4::int4[], $5::int2[])
              AS k(resolution, dimension, bucket, value_id, event_type_id)
           USING (resolution, dimension, bucket, value_id, event_type_id)
         ORDER BY 1, 2, 3, 4, 5
         FOR UPDATE OF s",
    )
    .bind::<Array<Int4>, _>(&resolutions)
    .bind::<Array<Int2>, _>(&dimensions)
    .bind::<Array<Timestamptz>, _>(&buckets)
    .bind::<Array<Int4>, _>(&values)
    .bind::<Array<Int2>, _>(&types)
    .load(conn)
    .await?;
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    let stored_sets = stored.len();
    let (blobs, cardinalities) =
        tokio::task::spawn_blocking(move || merge_sets(&mut additions, stored))
            .await
            .map_err(|e| Error::internal("user-set task failed", e))??;
    diesel::sql_query(
        "INSERT INTO rollup_sets (resolution, dimension, bucket, value_id, event_type_id, users, cardinality)
         SELECT * FROM unnest($1::int4[], $2::int2[], $3::timestamptz[], $4::int4[], $5::int2[], $6::bytea[], $7::int8[])
         ON CONFLICT (resolution, dimension, bucket, value_id, event_type_id) DO UPDATE
            SET users = EXCLUDED.users, cardinality = EXCLUDED.cardinality",
    )
    .bind::<Array<Int4>, _>(&resolutions)
    .bind::<Array<Int2>, _>(&dimensions)
    .bind::<Array<Timestamptz>, _>(&buckets)
    .bind::<Array<Int4>, _>(&values)
    .bind::<Array<Int2>, _>(&types)
    .bind::<Array<Bytea>, _>(&blobs)
    .bind::<Array<Int8>, _>(&cardinalities)
    .execute(conn)
    .await?;
    tracing::debug!(
        keys = resolutions.len(),
        stored_sets,
        bytes = blobs.iter().map(Vec::len).sum::<usize>(),
        group_and_read_ms = read_ms,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "fold sets"
    );
    Ok((rows, minutes))
}

/// The users each set gains from the deltas, and the distinct minutes.
fn group_set_deltas(
    deltas: &[SetDelta],
    horizon: DateTime<Utc>,
) -> Result<(SetAdditions, Vec<DateTime<Utc>>)> {
    let mut additions = SetAdditions::new();
    let mut minutes = Vec::new();
    for delta in deltas {
        let user = u64::try_from(delta.user_id)
            .map_err(|_| Error::Internal(format!("negative user id {}", delta.user_id).into()))?;
        minutes.push(delta.minute);
        // Dimension 0 also keeps the set of every type.
        let types = [delta.event_type_id, ANY_TYPE];
        let types = if delta.dimension == 0 {
            &types[..]
        } else {
            &types[..1]
        };
        for resolution in RESOLUTIONS {
            // Minute sets of pages and products only within the horizon.
            if resolution == 60 && delta.dimension != 0 && delta.minute < horizon {
                continue;
            }
            let bucket = floor_to(delta.minute, resolution);
            for &event_type_id in types {
                additions
                    .entry((
                        resolution,
                        delta.dimension,
                        bucket,
                        delta.value_id,
                        event_type_id,
                    ))
                    .or_default()
                    .insert(user);
            }
        }
    }
    minutes.sort_unstable();
    minutes.dedup();
    Ok((additions, minutes))
}

/// ORs the stored sets into the additions and serializes the results, in
/// key order (the order of the key arrays already bound).
fn merge_sets(
    additions: &mut SetAdditions,
    stored: Vec<StoredSet>,
) -> Result<(Vec<Vec<u8>>, Vec<i64>)> {
    for set in stored {
        let existing = RoaringTreemap::deserialize_from(&set.users[..])
            .map_err(|e| Error::internal("corrupt user set", e))?;
        if let Entry::Occupied(mut entry) = additions.entry((
            set.resolution,
            set.dimension,
            set.bucket,
            set.value_id,
            set.event_type_id,
        )) {
            *entry.get_mut() |= existing;
        }
    }
    let mut blobs = Vec::with_capacity(additions.len());
    let mut cardinalities = Vec::with_capacity(additions.len());
    for set in additions.values() {
        let mut blob = Vec::with_capacity(set.serialized_size());
        set.serialize_into(&mut blob)
            .map_err(|e| Error::internal("serializing a user set", e))?;
        blobs.push(blob);
        cardinalities.push(set.len() as i64);
    }
    Ok((blobs, cardinalities))
}
