//! GetMetrics reads: the SQL behind `query::Engine`.
//!
//! A rollup answer reads two things:
//!
//! * [`read_live`]: what changes between folds, read on every request in one
//!   statement: the snapshot's fold generation, the fold log above what the
//!   process has seen, the pending deltas of the range, and the sub-minute
//!   raw edges (events of the partial first and last minute, with their
//!   page or product found by index lookups).
//! * [`read_buckets`]: rollup rows of the buckets the process has not cached,
//!   with the generation of their snapshot. The engine uses them only when
//!   that generation equals the live part's: then no fold ran in between, and
//!   both parts describe one state (every event is in exactly one of deltas
//!   or rollups).
//!
//! Raw answers (a user filter) are one statement over `events` through the
//! `(user_id, timestamp)` index ([`raw`]).
//!
//! Every SQL text here is a constant (a few are composed once from
//! constant fragments); requests only choose among them and bind values.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, Bool, Bytea, Int2, Int4, Int8, Nullable, Numeric, Text, Timestamptz,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use roaring::RoaringTreemap;

use super::sql::Sql;
use crate::domain::metric::{
    CountSeries, Dimension, Metric, MetricQuery, SeriesValues, TypeSelection,
};
use crate::error::{Error, Result};
use crate::query::cache::{Bucket, CountRow, CountRows, FoldLog, Sales, SetRow, Touch, UserSet};

/// Revenue as an exact integer count of 1/10,000 of the unit, as text (the
/// column is numeric(30, 4)); NULL when zero.
macro_rules! revenue_text {
    ($col:expr) => {
        concat!(
            "CASE WHEN ",
            $col,
            " IS NULL OR ",
            $col,
            " = 0 THEN NULL ELSE (",
            $col,
            " * 10000)::numeric(38, 0)::text END"
        )
    };
}

/// Raw events of a time range, aggregated per (value, type) — or per user
/// for sets. `{range}` is the time condition and `{gate}` turns the end
/// edge off when its minute is read whole; `{part}` is the first column
/// (1, or a batch's segment); `{t}`/`{by}` say what `t` is:
/// the first event of a sub-minute edge (which lies in one output bucket),
/// or each event's minute for whole minutes read raw.
/// Detail rows are found by one index lookup per event (`LIMIT 1` keeps each
/// lookup a nested loop: a join here was once planned as a hash join over
/// every pageview), and for every event only where the dimension needs it.
fn edge_template(sets: bool, dimension: usize) -> String {
    match (sets, dimension) {
        (false, 0) => TYPE_COUNTS_EDGE.to_owned(),
        (true, 0) => r"SELECT {part}, {t}, 0, e.event_type_id, e.user_id, NULL::int8, NULL::text
               FROM events e WHERE {range} AND e.user_id IS NOT NULL{gate}
               GROUP BY {by}e.event_type_id, e.user_id"
            .to_owned(),
        (false, d) => {
            let measures = if d == 2 {
                concat!(
                    "count(*)::int8, sum(v.quantity)::int8, ",
                    revenue_text!("sum(v.amount)")
                )
            } else {
                "count(*)::int8, 0::int8, NULL::text"
            };
            value_edge(d, measures, "", "")
        }
        (true, d) => value_edge(
            d,
            "e.user_id, NULL::int8, NULL::text",
            " AND e.user_id IS NOT NULL",
            ", e.user_id",
        ),
    }
}

/// Counts of dimension 0 per type: every event, and purchases with their
/// quantity and revenue, in one scan of the range. The purchase lookup is
/// gated on the event's type: PostgreSQL makes `e.event_type_id = $13` a
/// one-time filter of the lateral subquery, so other events cost no index
/// lookup. (Every purchase event has its purchases row: validation
/// requires the detail and ingest writes both in one statement.)
const TYPE_COUNTS_EDGE: &str = concat!(
    r#"SELECT {part} AS part, {t} AS t, 0 AS value_id, e.event_type_id AS type_id, count(*)::int8 AS n,
                      coalesce(sum(p.quantity), 0)::int8 AS quantity, "#,
    revenue_text!("sum(p.amount)"),
    r#" AS revenue
               FROM events e
               LEFT JOIN LATERAL (SELECT x.quantity, x.amount FROM purchases x
                                  WHERE e.event_type_id = $13 AND x.event_id = e.event_id LIMIT 1) p ON true
               WHERE {range}{gate} GROUP BY {by}e.event_type_id"#
);

/// [`edge_template`] of a page (1) or product (2) dimension: events of the
/// dimension's type joined to their value `v` (the page or product, with
/// a purchase's quantity and amount), `measures` per (value, type) —
/// and per user when `user_cond`/`user_by` add the user.
fn value_edge(dimension: usize, measures: &str, user_cond: &str, user_by: &str) -> String {
    let (table, column, type_param) = if dimension == 1 {
        ("pageviews", "page_url", "$12")
    } else {
        ("purchases", "product_id", "$13")
    };
    // Sales are read only for purchase counts.
    let detail = if dimension == 2 && user_by.is_empty() {
        ", p.quantity, p.amount"
    } else {
        ""
    };
    format!(
        "SELECT {{part}}, {{t}}, v.value_id, e.event_type_id, {measures}
               FROM events e
               CROSS JOIN LATERAL (SELECT d.value_id{detail} FROM {table} p
                                   JOIN dimension_values d ON d.dimension = {dimension} AND d.value = p.{column}
                                   WHERE p.event_id = e.event_id LIMIT 1) v
               WHERE {{range}} AND e.event_type_id = {type_param}{user_cond}{{gate}}
                 AND ($2::int4 IS NULL OR v.value_id = $2)
               GROUP BY {{by}}v.value_id, e.event_type_id{user_by}"
    )
}

/// A sub-minute edge: one row per (value, type[, user]).
fn edge_sql(sets: bool, dimension: usize, range: &str, gate: &str) -> String {
    edge_template(sets, dimension)
        .replace("{part}", "1")
        .replace("{t}", r#"min(e."timestamp")"#)
        .replace("{by}", "")
        .replace("{range}", range)
        .replace("{gate}", gate)
}

const MINUTE_OF: &str = r#"date_trunc('minute', e."timestamp", 'UTC')"#;

/// Whole minutes `[$5, $6)` read from raw events (pages and products older
/// than the minute horizon), and from the rows retention moved out of them
/// (`retired_counts`, `retired_users`) in the same snapshot: one row per
/// (minute, value, type[, user]) of each source; the merge adds them up.
/// Parameters as [`live_sql`]'s.
fn raw_minutes_sql(sets: bool, dimension: usize) -> String {
    let body = edge_template(sets, dimension)
        .replace("{part}", "1")
        .replace("{t}", MINUTE_OF)
        .replace("{by}", &format!("{MINUTE_OF}, "))
        .replace("{range}", START_RANGE)
        .replace("{gate}", "");
    let retired = if sets {
        "SELECT 1, r.minute, r.value_id, r.event_type_id, r.user_id, NULL::int8, NULL::text
         FROM retired_users r"
    } else {
        concat!(
            "SELECT 1, r.minute, r.value_id, r.event_type_id, r.events, r.quantity, ",
            revenue_text!("r.revenue"),
            " FROM retired_counts r"
        )
    };
    format!(
        "SELECT * FROM ({body}) AS x(part, t, value_id, type_id, n, quantity, revenue)
         UNION ALL
         {retired} WHERE r.dimension = $1 AND r.minute >= $5 AND r.minute < $6
           AND ($2::int4 IS NULL OR r.value_id = $2)"
    )
}

/// `RAW_MINUTES[sets][dimension code]`.
static RAW_MINUTES: LazyLock<[[String; 3]; 2]> =
    LazyLock::new(|| [false, true].map(|sets| [0, 1, 2].map(|d| raw_minutes_sql(sets, d))));

const START_RANGE: &str = r#"e."timestamp" >= $5 AND e."timestamp" < $6"#;
const END_RANGE: &str = r#"e."timestamp" >= $7 AND e."timestamp" < $8"#;
/// A pseudo-constant condition: PostgreSQL makes it a one-time filter, so
/// the end edge is not even scanned when its minute is read whole.
const END_GATE: &str = " AND NOT (SELECT extend FROM after)";

/// The live statement. Parameters: `$1` dimension, `$2` value filter,
/// `$3..$4` the delta minutes, `$5..$6` the start edge, `$7..$8` the end
/// edge, `$9` whether the partial last minute may be read whole from
/// rollups, `$10` the end of that minute, `$11` the generation the process
/// has applied, `$12`/`$13` the pageview and purchase type ids.
///
/// Parts: 0 pending deltas, 1 edge events (aggregated), 2 the generation
/// and the minute horizon of pages and products (see `db/rollups.rs`),
/// 3 fold log rows, 4 the oldest logged generation, 5 whether the last
/// minute is read whole (no event lies in `[end, $10)`; then the end edge
/// is not read).
fn live_sql(sets: bool, dimension: usize) -> String {
    live_sql_with(sets, dimension, &edge_sql(sets, dimension, START_RANGE, ""))
}

/// [`live_sql`] with `start` as its start-edge part.
fn live_sql_with(sets: bool, dimension: usize, start: &str) -> String {
    let delta = if sets {
        "SELECT 0 AS part, d.minute AS t, d.value_id, d.event_type_id AS type_id, d.user_id AS n,
                NULL::int8 AS quantity, NULL::text AS revenue
         FROM rollup_set_deltas d"
    } else {
        concat!(
            "SELECT 0 AS part, d.minute AS t, d.value_id, d.event_type_id AS type_id, d.events AS n,
                d.quantity, ",
            revenue_text!("d.revenue"),
            " AS revenue FROM rollup_count_deltas d"
        )
    };
    let end = edge_sql(sets, dimension, END_RANGE, END_GATE);
    format!(
        r#"WITH after AS MATERIALIZED (
    SELECT $9::bool AND NOT EXISTS (SELECT 1 FROM events WHERE "timestamp" >= $8 AND "timestamp" < $10) AS extend
)
{delta}
WHERE d.dimension = $1 AND d.minute >= $3 AND d.minute < $4 AND ($2::int4 IS NULL OR d.value_id = $2)
UNION ALL
{start}
UNION ALL
{end}
UNION ALL
SELECT 2, now() - make_interval(secs => dimension_minute_seconds), NULL, NULL, fold_generation, NULL, NULL
FROM rollup_state
UNION ALL
SELECT 3, m, NULL, 0::int2, f.generation, NULL, NULL
FROM rollup_folds f CROSS JOIN LATERAL unnest(f.minutes) AS m WHERE f.generation > $11
UNION ALL
SELECT 3, h, NULL, 1::int2, f.generation, NULL, NULL
FROM rollup_folds f CROSS JOIN LATERAL unnest(f.hours) AS h
WHERE f.generation > $11 AND cardinality(f.minutes) = 0
UNION ALL
SELECT 3, NULL, NULL, 2::int2, f.generation, NULL, NULL FROM rollup_folds f WHERE f.generation > $11 AND f.everything
UNION ALL
SELECT 4, NULL, NULL, NULL, min(generation), NULL, NULL FROM rollup_folds
UNION ALL
SELECT 5, NULL, NULL, NULL, (SELECT extend FROM after)::int4::int8, NULL, NULL"#
    )
}

/// `LIVE[sets][dimension code]`.
static LIVE: LazyLock<[[String; 3]; 2]> =
    LazyLock::new(|| [false, true].map(|sets| [0, 1, 2].map(|d| live_sql(sets, d))));

/// The live statement of many queries that share the end edge (see
/// [`read_live_batch`]): [`live_sql`]'s parts with `$2` NULL (every
/// value), and instead of one start edge, the start edges `$14[i]..$15[i]`
/// read once per minute: the edges that end at one minute boundary `t` are
/// nested (`[f, t)` for several `f`), so the longest is scanned and each
/// event (for sets: each user's last event) is given its segment, the
/// number of those `f` at or before it (`width_bucket`). A row comes as part
/// `10 + segment` with `t` the minute boundary; an edge `[f, t)` holds the
/// rows of its boundary whose segment is at least `f`'s rank.
fn live_batch_sql(sets: bool, dimension: usize) -> String {
    let (part, t, by) = if sets {
        (
            r#"width_bucket(max(e."timestamp"), g.starts)"#,
            r#"max(e."timestamp")"#,
            "",
        )
    } else {
        (
            r#"width_bucket(e."timestamp", g.starts)"#,
            r#"min(e."timestamp")"#,
            r#"width_bucket(e."timestamp", g.starts), "#,
        )
    };
    let edge = edge_template(sets, dimension)
        .replace("{part}", part)
        .replace("{t}", t)
        .replace("{by}", by)
        .replace("{range}", r#"e."timestamp" >= g.f AND e."timestamp" < g.t"#)
        .replace("{gate}", "")
        .replace("$2", "NULL::int4");
    let start = format!(
        "SELECT (10 + x.part)::int4, g.t, x.value_id, x.type_id, x.n, x.quantity, x.revenue
         FROM (SELECT s.t, min(s.f) AS f, array_agg(DISTINCT s.f ORDER BY s.f) AS starts
               FROM unnest($14::timestamptz[], $15::timestamptz[]) AS s(f, t) GROUP BY s.t) AS g
         CROSS JOIN LATERAL ({edge}) AS x(part, t, value_id, type_id, n, quantity, revenue)"
    );
    live_sql_with(sets, dimension, &start)
}

/// `LIVE_BATCH[sets][dimension code]`.
static LIVE_BATCH: LazyLock<[[String; 3]; 2]> =
    LazyLock::new(|| [false, true].map(|sets| [0, 1, 2].map(|d| live_batch_sql(sets, d))));

/// The rows of `rollup_counts` (as `r`) over the pieces `$1..$3`
/// (resolution, from, to) that `$join` selects, then the generation of the
/// snapshot as a last row.
macro_rules! bucket_counts {
    ($join:literal) => {
        concat!(
            "SELECT r.resolution AS res, r.bucket AS t, r.value_id, r.event_type_id AS type_id, r.events AS n,
       r.quantity, ",
            revenue_text!("r.revenue"),
            " AS revenue, NULL::bytea AS users
FROM unnest($1::int4[], $2::timestamptz[], $3::timestamptz[]) AS p(res, f, t)
",
            $join,
            "
UNION ALL
SELECT NULL, NULL, NULL, NULL, fold_generation, NULL, NULL, NULL FROM rollup_state"
        )
    };
}

/// Rollup counts of the pieces of dimension `$4`.
const BUCKET_COUNTS: &str = bucket_counts!(
    "JOIN rollup_counts r ON r.resolution = p.res AND r.dimension = $4 AND r.bucket >= p.f AND r.bucket < p.t"
);

/// As [`BUCKET_COUNTS`] for one value `$5` (through `rollup_counts_value`).
const BUCKET_COUNTS_OF_VALUE: &str = bucket_counts!(
    "JOIN rollup_counts r ON r.dimension = $4 AND r.value_id = $5 AND r.resolution = p.res
                    AND r.bucket >= p.f AND r.bucket < p.t"
);

/// User sets of the pieces; `$5` value filter (NULL: all), `$6` which
/// types: -1 all, 0 only the any-type sets, 1 only the per-type sets.
const BUCKET_SETS: &str = "
SELECT r.resolution AS res, r.bucket AS t, r.value_id, r.event_type_id AS type_id, NULL::int8 AS n,
       NULL::int8 AS quantity, NULL::text AS revenue, r.users
FROM unnest($1::int4[], $2::timestamptz[], $3::timestamptz[]) AS p(res, f, t)
JOIN rollup_sets r ON r.resolution = p.res AND r.dimension = $4 AND r.bucket >= p.f AND r.bucket < p.t
WHERE ($5::int4 IS NULL OR r.value_id = $5)
  AND ($6 < 0 OR ($6 = 0) = (r.event_type_id = 0))
UNION ALL
SELECT NULL, NULL, NULL, NULL, fold_generation, NULL, NULL, NULL FROM rollup_state";

/// What [`read_live`] reads.
#[derive(Debug, Clone)]
pub struct LiveRequest {
    pub sets: bool,
    pub dimension: i16,
    pub value: Option<i32>,
    /// Minutes of pending deltas: `[from, to)`.
    pub deltas: (DateTime<Utc>, DateTime<Utc>),
    /// Sub-minute raw edges (empty when `from == to`).
    pub start_edge: (DateTime<Utc>, DateTime<Utc>),
    pub end_edge: (DateTime<Utc>, DateTime<Utc>),
    /// The end edge may be replaced by its whole minute from rollups.
    pub may_extend: bool,
    /// The end of the end edge's minute.
    pub end_minute: DateTime<Utc>,
    /// The fold log is read above this generation.
    pub known_generation: Option<i64>,
    pub pageview_type: i16,
    pub purchase_type: i16,
}

/// One live row: a pending delta (`delta` true, `t` its minute) or an edge
/// event (`t` its timestamp).
#[derive(Debug, Clone, Copy)]
pub struct LiveRow {
    pub delta: bool,
    pub t: DateTime<Utc>,
    pub value_id: i32,
    pub type_id: i16,
    /// Events (counts) or the user (sets).
    pub n: i64,
    pub sales: Sales,
}

/// What [`read_live`] found.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub log: FoldLog,
    /// Minutes of pages and products before this instant have no stored
    /// minute rows: they are read from raw events.
    pub horizon: Option<DateTime<Utc>>,
    /// True when the last partial minute is read whole from rollups and
    /// deltas (no event lies after `end` in it); the end edge was not read.
    pub extend: bool,
    pub rows: Vec<LiveRow>,
}

/// The columns every rollup and live read returns: a bucket's time, the
/// value and type it is for, and its measures.
#[derive(QueryableByName)]
struct Cells {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    t: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Int4>)]
    value_id: Option<i32>,
    #[diesel(sql_type = Nullable<Int2>)]
    type_id: Option<i16>,
    #[diesel(sql_type = Nullable<Int8>)]
    n: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    quantity: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    revenue: Option<String>,
}

impl Cells {
    /// Time, value, type and count, when the row holds all four (a fold
    /// log or generation row does not).
    fn key(&self) -> Option<(DateTime<Utc>, i32, i16, i64)> {
        Some((self.t?, self.value_id?, self.type_id?, self.n?))
    }
}

#[derive(QueryableByName)]
struct LiveSqlRow {
    #[diesel(sql_type = Int4)]
    part: i32,
    #[diesel(embed)]
    cells: Cells,
}

fn parse_revenue(text: Option<&str>) -> Result<i128> {
    match text {
        None => Ok(0),
        Some(t) => t
            .parse()
            .map_err(|e| Error::internal(format!("revenue {t:?} is not an integer"), e)),
    }
}

/// The statement of `r`'s kind (counts or sets) and dimension in `table`
/// ([`LIVE`] or [`RAW_MINUTES`]).
fn statement_for<'a>(table: &'a [[String; 3]; 2], r: &LiveRequest) -> Result<&'a str> {
    table[usize::from(r.sets)]
        .get(r.dimension as usize)
        .map(String::as_str)
        .ok_or_else(|| Error::Internal(format!("no rollup dimension {}", r.dimension).into()))
}

/// The sales of a row from its `quantity` and `revenue` columns.
fn sales_of(quantity: Option<i64>, revenue: Option<&str>) -> Result<Sales> {
    Ok(Sales {
        quantity: quantity.unwrap_or(0),
        revenue: parse_revenue(revenue)?,
    })
}

/// An empty bucket of counts or of user sets.
fn empty_bucket(sets: bool) -> Bucket {
    if sets {
        Bucket::Sets(Vec::new())
    } else {
        Bucket::Counts(CountRows::default())
    }
}

/// Appends a row to `counts`. `sales` stays empty until a row carries
/// some; from then on it has one entry per row.
fn push_count(counts: &mut CountRows, row: CountRow, sales: Sales) {
    if sales != Sales::default() || !counts.sales.is_empty() {
        counts.sales.resize(counts.rows.len(), Sales::default());
        counts.sales.push(sales);
    }
    counts.rows.push(row);
}

/// Reads the live part of a rollup answer (see the module docs).
pub async fn read_live(conn: &mut AsyncPgConnection, r: &LiveRequest) -> Result<Live> {
    let sql = statement_for(&LIVE, r)?;
    let rows: Vec<LiveSqlRow> = live_statement(sql, r).load(conn).await?;
    live_from_rows(rows)
}

/// The start edges of a batch read, as they come back: the rows of each
/// minute boundary `t`, each with its segment (see [`live_batch_sql`]).
#[derive(Debug, Default)]
pub struct StartEdges {
    /// Per boundary: its edges and their rows.
    by_end: HashMap<DateTime<Utc>, Nested>,
}

/// The start edges that end at one minute boundary: their distinct starts,
/// sorted, and the rows with their segments.
type Nested = (Vec<DateTime<Utc>>, Vec<(u32, LiveRow)>);

impl StartEdges {
    /// The rows of the start edge `[from, to)` (one of those asked for), of
    /// `value` or of every value, with `t` set to `from`: they all lie in
    /// the minute of `from`.
    pub fn rows(
        &self,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        value: Option<i32>,
    ) -> impl Iterator<Item = LiveRow> + '_ {
        let found = self.by_end.get(&to).and_then(|(starts, rows)| {
            // Events at or after `from` have a segment above its index.
            Some((starts.binary_search(&from).ok()?, rows))
        });
        found.into_iter().flat_map(move |(rank, rows)| {
            rows.iter()
                .filter(move |(segment, row)| {
                    *segment as usize > rank && value.is_none_or(|v| row.value_id == v)
                })
                .map(move |(_, row)| LiveRow { t: from, ..*row })
        })
    }
}

/// The live part of many queries in one statement: `base` gives what they
/// share (dimension, end edge, generation; `value` is ignored, every value
/// is read) and the union of their delta minutes; `starts` their start
/// edges `[from, to)`. Returns the shared part (pending deltas of every
/// value, end-edge rows, fold log) and the start edges' rows; the caller
/// keeps each query's own deltas, edge and values.
pub async fn read_live_batch(
    conn: &mut AsyncPgConnection,
    base: &LiveRequest,
    starts: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Result<(Live, StartEdges)> {
    let sql = statement_for(&LIVE_BATCH, base)?;
    let shared = LiveRequest {
        value: None,
        ..base.clone()
    };
    let rows: Vec<LiveSqlRow> = live_statement(sql, &shared)
        .bind::<Array<Timestamptz>, _>(starts.iter().map(|s| s.0).collect::<Vec<_>>())
        .bind::<Array<Timestamptz>, _>(starts.iter().map(|s| s.1).collect::<Vec<_>>())
        .load(conn)
        .await?;
    let mut edges = StartEdges::default();
    for (from, to) in starts {
        edges.by_end.entry(*to).or_default().0.push(*from);
    }
    for (starts, _) in edges.by_end.values_mut() {
        starts.sort_unstable();
        starts.dedup();
    }
    let mut rest = Vec::with_capacity(rows.len());
    for row in rows {
        let (Ok(segment), Some(to)) = (u32::try_from(row.part - 10), row.cells.t) else {
            rest.push(row);
            continue;
        };
        let slot = edges.by_end.get_mut(&to).ok_or_else(|| {
            Error::Internal(format!("start edge ending {to} was not asked for").into())
        })?;
        // Parts other than 0 are not deltas: `live_row` says so.
        if let Some(edge) = live_row(&row)? {
            slot.1.push((segment, edge));
        }
    }
    Ok((live_from_rows(rest)?, edges))
}

/// `sql` (a [`live_sql`] or [`raw_minutes_sql`] text) with its 13
/// parameters from `r`.
fn live_statement<'a>(sql: &'a str, r: &LiveRequest) -> Sql<'a> {
    Sql::new(sql)
        .bind::<Int2, _>(r.dimension)
        .bind::<Nullable<Int4>, _>(r.value)
        .bind::<Timestamptz, _>(r.deltas.0)
        .bind::<Timestamptz, _>(r.deltas.1)
        .bind::<Timestamptz, _>(r.start_edge.0)
        .bind::<Timestamptz, _>(r.start_edge.1)
        .bind::<Timestamptz, _>(r.end_edge.0)
        .bind::<Timestamptz, _>(r.end_edge.1)
        .bind::<Bool, _>(r.may_extend)
        .bind::<Timestamptz, _>(r.end_minute)
        .bind::<Int8, _>(r.known_generation.unwrap_or(i64::MAX))
        .bind::<Int2, _>(r.pageview_type)
        .bind::<Int2, _>(r.purchase_type)
}

/// Sorts the rows of the live statement into a [`Live`] by their part
/// (see [`live_sql`]).
fn live_from_rows(rows: Vec<LiveSqlRow>) -> Result<Live> {
    let mut live = Live::default();
    let mut generation = None;
    for row in rows {
        match row.part {
            0 | 1 => {
                if let Some(row) = live_row(&row)? {
                    live.rows.push(row);
                }
            }
            2 => {
                generation = row.cells.n;
                live.horizon = row.cells.t;
            }
            3 => {
                if let Some(entry) = fold_log_entry(&row) {
                    live.log.rows.push(entry);
                }
            }
            4 => live.log.oldest = row.cells.n,
            _ => live.extend = row.cells.n == Some(1),
        }
    }
    live.log.generation =
        generation.ok_or_else(|| Error::Internal("rollup_state has no row".into()))?;
    Ok(live)
}

/// A pending delta (part 0) or edge (part 1) row; `None` if a field is
/// missing.
fn live_row(row: &LiveSqlRow) -> Result<Option<LiveRow>> {
    let Some((t, value_id, type_id, n)) = row.cells.key() else {
        return Ok(None);
    };
    Ok(Some(LiveRow {
        delta: row.part == 0,
        t,
        value_id,
        type_id,
        n,
        sales: sales_of(row.cells.quantity, row.cells.revenue.as_deref())?,
    }))
}

/// A fold log row (part 3): its generation and what the fold touched
/// (`type_id` 0 a minute, 1 an hour, else everything).
fn fold_log_entry(row: &LiveSqlRow) -> Option<(i64, Touch)> {
    let (Some(g), Some(kind)) = (row.cells.n, row.cells.type_id) else {
        return None;
    };
    let touch = match (kind, row.cells.t) {
        (0, Some(t)) => Touch::Minute(t.timestamp()),
        (1, Some(t)) => Touch::Hour(t.timestamp()),
        _ => Touch::Everything,
    };
    Some((g, touch))
}

/// Whole minutes `[from, to)` of a dimension read from raw events, one
/// bucket per minute that holds any (see [`raw_minutes_sql`]).
pub async fn read_raw_minutes(
    conn: &mut AsyncPgConnection,
    r: &LiveRequest,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<((i32, i64), Bucket)>> {
    let sql = statement_for(&RAW_MINUTES, r)?;
    // Whole minutes [from, to): no end edge, no fold log.
    let minutes = LiveRequest {
        deltas: (from, to),
        start_edge: (from, to),
        end_edge: (to, to),
        may_extend: false,
        end_minute: to,
        known_generation: None,
        ..r.clone()
    };
    let rows: Vec<LiveSqlRow> = live_statement(sql, &minutes).load(conn).await?;
    let mut minutes = MinuteBuckets::new(r.sets);
    for row in rows {
        minutes.add(row)?;
    }
    Ok(minutes.finish())
}

/// The rows of [`read_raw_minutes`] gathered into one bucket per minute.
struct MinuteBuckets {
    sets: bool,
    out: Vec<((i32, i64), Bucket)>,
    /// Index in `out` of each minute's bucket.
    bucket_at: HashMap<i64, usize>,
    /// Users per (minute, value, type): rows come one user each, and a set
    /// enters its bucket whole in [`MinuteBuckets::finish`].
    users: HashMap<(i64, i32, i16), RoaringTreemap>,
}

impl MinuteBuckets {
    /// No bucket yet, of counts or of user sets.
    fn new(sets: bool) -> Self {
        Self {
            sets,
            out: Vec::new(),
            bucket_at: HashMap::new(),
            users: HashMap::new(),
        }
    }

    /// Adds one row to its minute's bucket; a row missing a field is
    /// skipped.
    fn add(&mut self, row: LiveSqlRow) -> Result<()> {
        let Some((t, value_id, type_id, n)) = row.cells.key() else {
            return Ok(());
        };
        let minute = t.timestamp();
        let at = *self.bucket_at.entry(minute).or_insert_with(|| {
            self.out.push(((60, minute), empty_bucket(self.sets)));
            self.out.len() - 1
        });
        match &mut self.out[at].1 {
            Bucket::Sets(_) => {
                if let Ok(user) = u64::try_from(n) {
                    self.users
                        .entry((minute, value_id, type_id))
                        .or_default()
                        .insert(user);
                }
            }
            Bucket::Counts(counts) => {
                let sales = sales_of(row.cells.quantity, row.cells.revenue.as_deref())?;
                let row = CountRow {
                    events: n,
                    value_id,
                    type_id,
                };
                push_count(counts, row, sales);
            }
        }
        Ok(())
    }

    /// The buckets, with the user sets put into theirs.
    fn finish(mut self) -> Vec<((i32, i64), Bucket)> {
        for ((minute, value_id, type_id), set) in self.users {
            if let Some(&at) = self.bucket_at.get(&minute)
                && let Bucket::Sets(sets) = &mut self.out[at].1
            {
                sets.push(SetRow {
                    value_id,
                    type_id,
                    users: UserSet::from_bitmap(set),
                });
            }
        }
        self.out
    }
}

/// What [`read_buckets`] reads: runs of buckets of one resolution.
#[derive(Debug, Clone)]
pub struct BucketRequest {
    pub sets: bool,
    pub dimension: i16,
    pub value: Option<i32>,
    /// For sets: `Some(true)` only the any-type sets, `Some(false)` only
    /// the per-type sets, `None` both.
    pub any_type: Option<bool>,
    /// `(resolution, from, to)`.
    pub runs: Vec<(i32, DateTime<Utc>, DateTime<Utc>)>,
}

#[derive(QueryableByName)]
struct BucketSqlRow {
    #[diesel(sql_type = Nullable<Int4>)]
    res: Option<i32>,
    #[diesel(embed)]
    cells: Cells,
    #[diesel(sql_type = Nullable<Bytea>)]
    users: Option<Vec<u8>>,
}

/// Rollup rows of every bucket in the runs, grouped per (resolution,
/// bucket start in Unix seconds), with the snapshot's generation. Buckets
/// without rows are absent (the caller knows they are empty).
pub async fn read_buckets(
    conn: &mut AsyncPgConnection,
    r: &BucketRequest,
) -> Result<(i64, Vec<((i32, i64), Bucket)>)> {
    let rows: Vec<BucketSqlRow> = bucket_query(r).load(conn).await?;
    let mut generation = None;
    let mut out: Vec<((i32, i64), Bucket)> = Vec::new();
    for row in rows {
        let (Some(res), Some(t), Some(value_id), Some(type_id)) =
            (row.res, row.cells.t, row.cells.value_id, row.cells.type_id)
        else {
            generation = row.cells.n;
            continue;
        };
        let key = (res, t.timestamp());
        if out.last().is_none_or(|(k, _)| *k != key) {
            out.push((key, empty_bucket(r.sets)));
        }
        let Some((_, bucket)) = out.last_mut() else {
            continue;
        };
        add_bucket_row(bucket, row, value_id, type_id)?;
    }
    let generation = generation.ok_or_else(|| Error::Internal("rollup_state has no row".into()))?;
    Ok((generation, merge_runs(out)))
}

/// The statement of `r` with its binds: [`BUCKET_SETS`],
/// [`BUCKET_COUNTS_OF_VALUE`] or [`BUCKET_COUNTS`].
fn bucket_query(r: &BucketRequest) -> Sql<'static> {
    let res: Vec<i32> = r.runs.iter().map(|x| x.0).collect();
    let from: Vec<DateTime<Utc>> = r.runs.iter().map(|x| x.1).collect();
    let to: Vec<DateTime<Utc>> = r.runs.iter().map(|x| x.2).collect();
    if r.sets {
        Sql::new(BUCKET_SETS)
            .bind::<Array<Int4>, _>(res)
            .bind::<Array<Timestamptz>, _>(from)
            .bind::<Array<Timestamptz>, _>(to)
            .bind::<Int2, _>(r.dimension)
            .bind::<Nullable<Int4>, _>(r.value)
            .bind::<Int4, _>(match r.any_type {
                None => -1,
                Some(true) => 0,
                Some(false) => 1,
            })
    } else {
        let q = Sql::new(if r.value.is_some() {
            BUCKET_COUNTS_OF_VALUE
        } else {
            BUCKET_COUNTS
        })
        .bind::<Array<Int4>, _>(res)
        .bind::<Array<Timestamptz>, _>(from)
        .bind::<Array<Timestamptz>, _>(to)
        .bind::<Int2, _>(r.dimension);
        match r.value {
            Some(v) => q.bind::<Int4, _>(v),
            None => q,
        }
    }
}

/// Adds one rollup row (of `value_id`, `type_id`) to its bucket: a user
/// set, or a count with its sales.
fn add_bucket_row(
    bucket: &mut Bucket,
    row: BucketSqlRow,
    value_id: i32,
    type_id: i16,
) -> Result<()> {
    match bucket {
        Bucket::Sets(sets) => {
            let blob = row.users.unwrap_or_default();
            let users = RoaringTreemap::deserialize_from(&blob[..])
                .map_err(|e| Error::internal("corrupt user set", e))?;
            sets.push(SetRow {
                value_id,
                type_id,
                users: UserSet::from_bitmap(users),
            });
        }
        Bucket::Counts(counts) => {
            let sales = sales_of(row.cells.quantity, row.cells.revenue.as_deref())?;
            let row = CountRow {
                events: row.cells.n.unwrap_or(0),
                value_id,
                type_id,
            };
            push_count(counts, row, sales);
        }
    }
    Ok(())
}

/// Sorts buckets by key and merges those of one key. Rows of one bucket
/// arrive together only if the plan keeps them so; a bucket may come in
/// several runs of rows.
fn merge_runs(mut out: Vec<((i32, i64), Bucket)>) -> Vec<((i32, i64), Bucket)> {
    out.sort_by_key(|(k, _)| *k);
    let mut merged: Vec<((i32, i64), Bucket)> = Vec::with_capacity(out.len());
    for (key, bucket) in out {
        match merged.last_mut() {
            Some((k, existing)) if *k == key => append(existing, bucket),
            _ => merged.push((key, bucket)),
        }
    }
    merged
}

fn append(into: &mut Bucket, from: Bucket) {
    match (into, from) {
        (Bucket::Sets(a), Bucket::Sets(b)) => a.extend(b),
        (Bucket::Counts(a), Bucket::Counts(mut b)) => {
            if !a.sales.is_empty() || !b.sales.is_empty() {
                a.sales.resize(a.rows.len(), Sales::default());
                b.sales.resize(b.rows.len(), Sales::default());
            }
            a.rows.extend(b.rows);
            a.sales.extend(b.sales);
        }
        _ => {}
    }
}

/// The id of a value of a dimension, if any event ever carried it.
pub async fn value_id(
    conn: &mut AsyncPgConnection,
    dimension: i16,
    value: &str,
) -> Result<Option<i32>> {
    use super::schema::dimension_values::dsl as dv;
    Ok(dv::dimension_values
        .filter(dv::dimension.eq(dimension))
        .filter(dv::value.eq(value))
        .select(dv::value_id)
        .first(conn)
        .await
        .optional()?)
}

/// The strings of dimension values.
pub async fn value_names(conn: &mut AsyncPgConnection, ids: &[i32]) -> Result<Vec<(i32, String)>> {
    use super::schema::dimension_values::dsl as dv;
    Ok(dv::dimension_values
        .filter(dv::value_id.eq_any(ids))
        .select((dv::value_id, dv::value))
        .load(conn)
        .await?)
}

/// Every event type: (id, name).
pub async fn event_types(conn: &mut AsyncPgConnection) -> Result<Vec<(i16, String)>> {
    use super::schema::event_types::dsl as et;
    Ok(et::event_types
        .select((et::event_type_id, et::name))
        .load(conn)
        .await?)
}

/// The plan PostgreSQL runs for the rollup part of "events per minute by
/// type" over `[from, to)` (minute buckets), with `EXPLAIN ANALYZE`: tests
/// check that dashboard queries read rollups, not raw events.
pub async fn explain_bucket_read(
    conn: &mut AsyncPgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<String> {
    explain(
        conn,
        diesel::sql_query(format!(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {BUCKET_COUNTS}"
        ))
        .into_boxed()
        .bind::<Array<Int4>, _>(vec![60])
        .bind::<Array<Timestamptz>, _>(vec![from])
        .bind::<Array<Timestamptz>, _>(vec![to])
        .bind::<Int2, _>(0i16),
    )
    .await
}

/// The plan of the live statement of a minute-aligned range `[from, to)`
/// over every event: the raw edges are empty, so any scan of `events` must
/// be a never-executed branch or return no row.
pub async fn explain_live_read(
    conn: &mut AsyncPgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<String> {
    let sql = format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {}", LIVE[0][0]);
    explain(
        conn,
        diesel::sql_query(sql)
            .into_boxed()
            .bind::<Int2, _>(0i16)
            .bind::<Nullable<Int4>, _>(None::<i32>)
            .bind::<Timestamptz, _>(from)
            .bind::<Timestamptz, _>(to)
            .bind::<Timestamptz, _>(from)
            .bind::<Timestamptz, _>(from)
            .bind::<Timestamptz, _>(to)
            .bind::<Timestamptz, _>(to)
            .bind::<Bool, _>(false)
            .bind::<Timestamptz, _>(to)
            .bind::<Int8, _>(i64::MAX)
            .bind::<Int2, _>(1i16)
            .bind::<Int2, _>(3i16),
    )
    .await
}

async fn explain(
    conn: &mut AsyncPgConnection,
    query: diesel::query_builder::BoxedSqlQuery<
        '_,
        diesel::pg::Pg,
        diesel::query_builder::SqlQuery,
    >,
) -> Result<String> {
    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let lines: Vec<PlanLine> = query.load(conn).await?;
    Ok(lines
        .into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The output bucket of `u.t` ($1 = width, 0 for TOTAL; $2 = start).
macro_rules! bucket_expr {
    () => {
        "CASE WHEN $1 = 0 THEN $2 ELSE date_bin(make_interval(secs => $1), u.t, TIMESTAMPTZ '2000-01-01 00:00:00+00') END"
    };
}

/// Raw events, every filter, aggregated per output bucket and group.
/// `$3` group ([`raw_group_code`]), `$4` value ([`raw_value_code`]),
/// `$5..$6` the range, `$7..$8` types, `$9` page, `$10` product, `$11` the
/// client's user id.
const RAW_SQL: &str = concat!(
    "SELECT ", bucket_expr!(), " AS bucket, u.grp,
       CASE $4 WHEN 2 THEN count(DISTINCT u.user_id)::numeric
               WHEN 3 THEN count(u.pageview)::numeric
               WHEN 4 THEN count(u.purchase)::numeric
               WHEN 5 THEN coalesce(sum(u.amount), 0)
               WHEN 6 THEN coalesce(sum(u.quantity), 0)::numeric
               ELSE count(*)::numeric END AS value
FROM (
    SELECT e.\"timestamp\" AS t, e.user_id, pv.event_id AS pageview, pu.event_id AS purchase, pu.amount, pu.quantity,
           CASE $3 WHEN 1 THEN et.name WHEN 2 THEN pv.page_url WHEN 3 THEN pu.product_id ELSE '' END AS grp
    FROM events e
    JOIN event_types et USING (event_type_id)
    LEFT JOIN pageviews pv ON pv.event_id = e.event_id
    LEFT JOIN purchases pu ON pu.event_id = e.event_id
    WHERE e.\"timestamp\" >= $5 AND e.\"timestamp\" < $6
      AND ($7 OR et.name = ANY($8))
      AND ($9::text IS NULL OR pv.page_url = $9)
      AND ($10::text IS NULL OR pu.product_id = $10)
      AND ($11::text IS NULL OR e.user_id = (SELECT x.user_id FROM users x WHERE x.external_id = $11))
      AND ($3 <> 2 OR pv.page_url IS NOT NULL)
      AND ($3 <> 3 OR pu.product_id IS NOT NULL)
      AND ($4 <> 2 OR e.user_id IS NOT NULL)
) u
GROUP BY 1, 2"
);

/// The `$3` of [`RAW_SQL`]: what rows are grouped by.
fn raw_group_code(group: Dimension) -> i32 {
    match group {
        Dimension::None => 0,
        Dimension::EventType => 1,
        Dimension::PageUrl => 2,
        Dimension::ProductId => 3,
    }
}

/// The `$4` of [`RAW_SQL`]: what is counted or summed.
fn raw_value_code(metric: Metric) -> i32 {
    match metric {
        Metric::Events => 1,
        Metric::UniqueUsers => 2,
        Metric::Pageviews => 3,
        Metric::Purchases => 4,
        Metric::Revenue => 5,
        Metric::Quantity => 6,
    }
}

#[derive(QueryableByName)]
struct RawRow {
    #[diesel(sql_type = Timestamptz)]
    bucket: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    grp: String,
    #[diesel(sql_type = Numeric)]
    value: bigdecimal::BigDecimal,
}

/// `0` for TOTAL, else the bucket width in seconds.
fn granularity_secs(q: &MetricQuery) -> i32 {
    q.granularity.seconds().unwrap_or(0)
}

fn raw_statement<'a>(
    sql: &str,
    q: &MetricQuery,
    secs: i32,
) -> diesel::query_builder::BoxedSqlQuery<'a, diesel::pg::Pg, diesel::query_builder::SqlQuery> {
    let f = &q.filter;
    diesel::sql_query(sql)
        .into_boxed()
        .bind::<Int4, _>(secs)
        .bind::<Timestamptz, _>(q.start)
        .bind::<Int4, _>(raw_group_code(q.group_by))
        .bind::<Int4, _>(raw_value_code(q.metric))
        .bind::<Timestamptz, _>(q.start)
        .bind::<Timestamptz, _>(q.end)
        .bind::<Bool, _>(f.event_types.is_empty())
        .bind::<Array<Text>, _>(f.event_types.clone())
        .bind::<Nullable<Text>, _>(f.page_url.clone())
        .bind::<Nullable<Text>, _>(f.product_id.clone())
        .bind::<Nullable<Text>, _>(f.user_id.clone())
}

/// The plan of the raw-events statement for `q` (`EXPLAIN ANALYZE`): tests
/// check that a user filter reads `events_user_id_timestamp`.
pub async fn explain_raw(conn: &mut AsyncPgConnection, q: &MetricQuery) -> Result<String> {
    let sql = format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {RAW_SQL}");
    explain(conn, raw_statement(&sql, q, granularity_secs(q))).await
}

/// The output bucket of a row; TOTAL rows all land in the one bucket.
fn index_of(q: &MetricQuery, t: DateTime<Utc>) -> Option<usize> {
    if q.granularity.seconds().is_none() {
        Some(0)
    } else {
        q.bucket_index(t)
    }
}

fn collect_raw(
    q: &MetricQuery,
    buckets: usize,
    rows: Vec<RawRow>,
    limit: u32,
) -> Vec<SeriesValues> {
    let mut series = CountSeries::new(buckets);
    for row in rows {
        if let Some(i) = index_of(q, row.bucket) {
            series.add(&row.grp, i, row.value);
        }
    }
    series.finish(q.group_by != Dimension::None, limit)
}

/// Answers a query with a user filter from raw events: one user's events
/// through `events_user_id_timestamp`, so the cost is that user's events in
/// the range.
pub async fn raw(conn: &mut AsyncPgConnection, q: &MetricQuery) -> Result<Vec<SeriesValues>> {
    let buckets = q.bucket_starts().len();
    let grouped = q.group_by != Dimension::None;
    let run = async |conn: &mut AsyncPgConnection, secs: i32| -> Result<Vec<RawRow>> {
        Ok(raw_statement(RAW_SQL, q, secs).load(conn).await?)
    };
    if q.metric != Metric::UniqueUsers {
        let rows = run(conn, granularity_secs(q)).await?;
        return Ok(collect_raw(q, buckets, rows, q.limit));
    }
    // Distinct users do not add up across buckets: the totals are a second
    // read of the same snapshot.
    let secs = granularity_secs(q);
    let (points, totals) = conn
        .build_transaction()
        .read_only()
        .repeatable_read()
        .run::<_, Error, _>(async |conn| Ok((run(conn, secs).await?, run(conn, 0).await?)))
        .await?;
    // Rank by distinct totals, not by the sum of per-bucket counts.
    let mut series = collect_raw(q, buckets, points, u32::MAX);
    let mut total_of = std::collections::HashMap::new();
    for row in totals {
        total_of.insert(
            row.grp,
            bigdecimal::ToPrimitive::to_f64(&row.value).unwrap_or(0.0),
        );
    }
    for s in &mut series {
        s.total = total_of.get(&s.group).copied().unwrap_or(0.0);
    }
    if grouped {
        series.sort_by(|a, b| {
            b.total
                .total_cmp(&a.total)
                .then_with(|| a.group.cmp(&b.group))
        });
        series.truncate(q.limit as usize);
    }
    Ok(series)
}

/// Type ids named by a selection (`None`: all types). Unknown names match
/// no event and are left out.
pub fn type_ids(
    selection: &TypeSelection,
    by_name: &std::collections::HashMap<String, i16>,
) -> Option<Vec<i16>> {
    match selection {
        TypeSelection::All => None,
        TypeSelection::Only(names) => Some(
            names
                .iter()
                .filter_map(|n| by_name.get(n).copied())
                .collect(),
        ),
    }
}

#[cfg(test)]
mod print_sql {
    #[test]
    #[ignore = "prints the live-part SQL for reading; run by hand"]
    fn print_live_sql() {
        println!("{}", super::LIVE[0][0]);
        println!("-- raw");
        println!("{}", super::RAW_MINUTES[0][1]);
    }
}
