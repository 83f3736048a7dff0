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

#[derive(QueryableByName)]
struct Moved {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct UserDelta {
    #[diesel(sql_type = Timestamptz)]
    minute: DateTime<Utc>,
    #[diesel(sql_type = Int2)]
    event_type_id: i16,
    #[diesel(sql_type = Int8)]
    user_id: i64,
}

#[derive(QueryableByName)]
struct StoredSet {
    #[diesel(sql_type = Int4)]
    resolution: i32,
    #[diesel(sql_type = Timestamptz)]
    bucket: DateTime<Utc>,
    #[diesel(sql_type = Int2)]
    event_type_id: i16,
    #[diesel(sql_type = Bytea)]
    users: Vec<u8>,
}

/// Adds each moved delta to its minute, hour and day rows.
const FOLD_TYPES: &str = r#"
WITH moved AS (DELETE FROM rollup_type_deltas RETURNING minute, event_type_id, events),
agg AS (
    SELECT r.res, date_bin(make_interval(secs => r.res), m.minute, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
           m.event_type_id, sum(m.events)::bigint AS events
    FROM moved m CROSS JOIN (VALUES (60), (3600), (86400)) AS r(res)
    GROUP BY 1, 2, 3
), up AS (
    INSERT INTO rollup_type_counts AS t (resolution, bucket, event_type_id, events)
    SELECT * FROM agg ORDER BY 1, 2, 3
    ON CONFLICT (resolution, bucket, event_type_id) DO UPDATE SET events = t.events + EXCLUDED.events
)
SELECT count(*) AS n FROM moved
"#;

const FOLD_PAGES: &str = r#"
WITH moved AS (DELETE FROM rollup_page_deltas RETURNING minute, page_url, pageviews),
agg AS (
    SELECT r.res, date_bin(make_interval(secs => r.res), m.minute, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
           m.page_url, sum(m.pageviews)::bigint AS pageviews
    FROM moved m CROSS JOIN (VALUES (60), (3600), (86400)) AS r(res)
    GROUP BY 1, 2, 3
), up AS (
    INSERT INTO rollup_page_counts AS t (resolution, bucket, page_url, pageviews)
    SELECT * FROM agg ORDER BY 1, 2, 3
    ON CONFLICT (resolution, bucket, page_url) DO UPDATE SET pageviews = t.pageviews + EXCLUDED.pageviews
)
SELECT count(*) AS n FROM moved
"#;

const FOLD_PRODUCTS: &str = r#"
WITH moved AS (DELETE FROM rollup_product_deltas RETURNING minute, product_id, purchases, quantity, revenue),
agg AS (
    SELECT r.res, date_bin(make_interval(secs => r.res), m.minute, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
           m.product_id, sum(m.purchases)::bigint AS purchases, sum(m.quantity)::bigint AS quantity,
           sum(m.revenue) AS revenue
    FROM moved m CROSS JOIN (VALUES (60), (3600), (86400)) AS r(res)
    GROUP BY 1, 2, 3
), up AS (
    INSERT INTO rollup_product_counts AS t (resolution, bucket, product_id, purchases, quantity, revenue)
    SELECT * FROM agg ORDER BY 1, 2, 3
    ON CONFLICT (resolution, bucket, product_id) DO UPDATE
        SET purchases = t.purchases + EXCLUDED.purchases,
            quantity = t.quantity + EXCLUDED.quantity,
            revenue = t.revenue + EXCLUDED.revenue
)
SELECT count(*) AS n FROM moved
"#;

/// Folds every committed delta into the rollups, in one transaction.
pub async fn fold(conn: &mut AsyncPgConnection) -> Result<FoldOutcome> {
    conn.transaction::<_, Error, _>(async |conn| {
        let lock: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
            .bind::<BigInt, _>(FOLD_LOCK)
            .get_result(conn)
            .await?;
        if !lock.locked {
            return Ok(FoldOutcome::default());
        }
        let delta_rows = fold_pending(conn).await?;
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
        "VACUUM (SKIP_LOCKED, TRUNCATE false) rollup_type_deltas, rollup_page_deltas, rollup_product_deltas, rollup_user_deltas",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The body of a fold, inside the caller's transaction.
async fn fold_pending(conn: &mut AsyncPgConnection) -> Result<u64> {
    let mut delta_rows = 0u64;
    for sql in [FOLD_TYPES, FOLD_PAGES, FOLD_PRODUCTS] {
        let moved: Moved = diesel::sql_query(sql).get_result(conn).await?;
        delta_rows += moved.n as u64;
    }
    delta_rows += fold_user_sets(conn).await?;
    if delta_rows > 0 {
        // The query cache keys on this: see db/metrics.rs.
        diesel::sql_query("UPDATE rollup_state SET fold_generation = fold_generation + 1")
            .execute(conn)
            .await?;
    }
    Ok(delta_rows)
}

/// Seeds the deltas of every event in `[$1, $2)` from the raw tables.
const SEED_DELTAS: [&str; 4] = [
    r#"INSERT INTO rollup_type_deltas (minute, event_type_id, events)
       SELECT date_trunc('minute', "timestamp", 'UTC'), event_type_id, count(*) FROM events
       WHERE "timestamp" >= $1 AND "timestamp" < $2 GROUP BY 1, 2"#,
    r#"INSERT INTO rollup_page_deltas (minute, page_url, pageviews)
       SELECT date_trunc('minute', e."timestamp", 'UTC'), p.page_url, count(*)
       FROM pageviews p JOIN events e USING (event_id)
       WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1, 2"#,
    r#"INSERT INTO rollup_product_deltas (minute, product_id, purchases, quantity, revenue)
       SELECT date_trunc('minute', e."timestamp", 'UTC'), p.product_id, count(*), sum(p.quantity), sum(p.amount)
       FROM purchases p JOIN events e USING (event_id)
       WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1, 2"#,
    r#"INSERT INTO rollup_user_deltas (minute, event_type_id, user_id)
       SELECT DISTINCT date_trunc('minute', "timestamp", 'UTC'), event_type_id, user_id FROM events
       WHERE "timestamp" >= $1 AND "timestamp" < $2 AND user_id IS NOT NULL"#,
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
        diesel::sql_query("LOCK TABLE events IN SHARE MODE").execute(conn).await?;
        diesel::sql_query(
            "TRUNCATE rollup_type_counts, rollup_page_counts, rollup_product_counts, rollup_user_sets,
                      rollup_type_deltas, rollup_page_deltas, rollup_product_deltas, rollup_user_deltas",
        )
        .execute(conn)
        .await?;
        let span: Span = diesel::sql_query(r#"SELECT min("timestamp") AS first, max("timestamp") AS last FROM events"#)
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
                let rows = fold_pending(conn).await?;
                total += rows;
                progress(day, rows);
                day = next;
            }
        }
        diesel::sql_query("UPDATE rollup_state SET fold_generation = fold_generation + 1")
            .execute(conn)
            .await?;
        Ok(total)
    })
    .await
}

/// Moves user deltas into the bitmaps of their minute, hour and day, for
/// their own type and for "any type".
async fn fold_user_sets(conn: &mut AsyncPgConnection) -> Result<u64> {
    let deltas: Vec<UserDelta> = diesel::sql_query(
        "DELETE FROM rollup_user_deltas RETURNING minute, event_type_id, user_id",
    )
    .load(conn)
    .await?;
    if deltas.is_empty() {
        return Ok(0);
    }
    // Bitmap work is CPU-bound: keep it off the async worker threads, so a
    // fold never stalls the ingest and query tasks sharing them.
    let rows = deltas.len() as u64;
    let mut additions = tokio::task::spawn_blocking(move || group_user_deltas(&deltas))
        .await
        .map_err(|e| Error::Internal(format!("user-set task failed: {e}")))??;

    let resolutions: Vec<i32> = additions.keys().map(|k| k.0).collect();
    let buckets: Vec<DateTime<Utc>> = additions.keys().map(|k| k.1).collect();
    let types: Vec<i16> = additions.keys().map(|k| k.2).collect();
    let stored: Vec<StoredSet> = diesel::sql_query(
        "SELECT s.resolution, s.bucket, s.event_type_id, s.users
         FROM rollup_user_sets s
         JOIN unnest($1::int4[], $2::timestamptz[], $3::int2[]) AS k(resolution, bucket, event_type_id)
           USING (resolution, bucket, event_type_id)
         ORDER BY 1, 2, 3
         FOR UPDATE OF s",
    )
    .bind::<Array<Int4>, _>(&resolutions)
    .bind::<Array<Timestamptz>, _>(&buckets)
    .bind::<Array<Int2>, _>(&types)
    .load(conn)
    .await?;
    let (blobs, cardinalities) =
        tokio::task::spawn_blocking(move || merge_user_sets(&mut additions, stored))
            .await
            .map_err(|e| Error::Internal(format!("user-set task failed: {e}")))??;
    diesel::sql_query(
        "INSERT INTO rollup_user_sets (resolution, bucket, event_type_id, users, cardinality)
         SELECT * FROM unnest($1::int4[], $2::timestamptz[], $3::int2[], $4::bytea[], $5::int8[])
         ON CONFLICT (resolution, bucket, event_type_id) DO UPDATE
            SET users = EXCLUDED.users, cardinality = EXCLUDED.cardinality",
    )
    .bind::<Array<Int4>, _>(&resolutions)
    .bind::<Array<Timestamptz>, _>(&buckets)
    .bind::<Array<Int2>, _>(&types)
    .bind::<Array<Bytea>, _>(&blobs)
    .bind::<Array<Int8>, _>(&cardinalities)
    .execute(conn)
    .await?;
    Ok(rows)
}

type UserAdditions = BTreeMap<(i32, DateTime<Utc>, i16), RoaringTreemap>;

/// The users each (resolution, bucket, type) set gains from the deltas.
fn group_user_deltas(deltas: &[UserDelta]) -> Result<UserAdditions> {
    let mut additions = UserAdditions::new();
    for delta in deltas {
        let user = u64::try_from(delta.user_id)
            .map_err(|_| Error::Internal(format!("negative user id {}", delta.user_id)))?;
        for resolution in RESOLUTIONS {
            let bucket = floor_to(delta.minute, resolution);
            for event_type_id in [delta.event_type_id, ANY_TYPE] {
                additions
                    .entry((resolution, bucket, event_type_id))
                    .or_default()
                    .insert(user);
            }
        }
    }
    Ok(additions)
}

/// ORs the stored sets into the additions and serializes the results, in
/// key order (the order of the key arrays already bound).
fn merge_user_sets(
    additions: &mut UserAdditions,
    stored: Vec<StoredSet>,
) -> Result<(Vec<Vec<u8>>, Vec<i64>)> {
    for set in stored {
        let existing = RoaringTreemap::deserialize_from(&set.users[..])
            .map_err(|e| Error::Internal(format!("corrupt user set: {e}")))?;
        if let Entry::Occupied(mut entry) =
            additions.entry((set.resolution, set.bucket, set.event_type_id))
        {
            *entry.get_mut() |= existing;
        }
    }
    let mut blobs = Vec::with_capacity(additions.len());
    let mut cardinalities = Vec::with_capacity(additions.len());
    for set in additions.values() {
        let mut blob = Vec::with_capacity(set.serialized_size());
        set.serialize_into(&mut blob)
            .map_err(|e| Error::Internal(format!("serializing a user set: {e}")))?;
        blobs.push(blob);
        cardinalities.push(set.len() as i64);
    }
    Ok((blobs, cardinalities))
}
