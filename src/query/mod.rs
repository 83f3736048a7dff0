//! The query service: one path from a validated [`MetricQuery`] to its
//! answer, used alike by gRPC `GetMetrics`, the dashboard's JSON API and the
//! alert evaluator. Transports only convert.
//!
//! # The path of a rollup answer
//!
//! 1. The live part (`db::metrics::read_live`): the snapshot's generation,
//!    the fold log since this process last looked, pending deltas and
//!    sub-minute raw edges. The log is applied to the [`BucketCache`].
//! 2. The plan (`domain::metric::plan`) splits `[start, end)` into rollup
//!    buckets, coarsest first; buckets valid in the cache are used as they
//!    are, the rest are read in chunks (`db::metrics::read_buckets`) and
//!    cached. A chunk read in another generation than the live part (a fold
//!    ran in between) is discarded and the answer retried; the third try
//!    runs both reads in one repeatable-read snapshot.
//! 3. Merge ([`merge`]): totals per group first (for user sets, from the
//!    coarsest plan), the top `limit` groups ranked on them, then series of
//!    the winners only. Memory is the rows the plan covers, bounded by the
//!    request budget (`--query-memory-bytes`, refused with
//!    RESOURCE_EXHAUSTED beyond), plus `limit × buckets` values.
//!
//! Cost model (ARCHITECTURE.md): rows read = Σ over the plan's buckets of
//! the distinct (value, type) in each, from PostgreSQL for buckets not
//! cached, plus the pending deltas and the events of the two partial
//! minutes; a repeated or shifted request reads only what folds touched
//! since (the current minute, hour and day under live traffic).

pub mod cache;
mod merge;
mod names;
mod service;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use diesel_async::AsyncPgConnection;

use crate::db::metrics::{self as sql, BucketRequest, Live, LiveRequest};
use crate::domain::metric::{
    CountSeries, Dimension, Granularity, Measure, MetricQuery, RollupRead, SeriesValues, Source,
    TypeSelection, ceil_to, floor_to, plan,
};
use crate::error::{Error, Result};
use cache::{Bucket, BucketCache, CountRows, Shape};
pub use names::Names;
pub use service::Queries;

/// How an answer used the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Every rollup bucket came from the cache.
    Hit,
    /// Some buckets were read from PostgreSQL (and cached).
    Miss,
    /// Not cacheable: raw events, or nothing to read.
    Bypass,
}

impl CacheUse {
    pub fn label(self) -> &'static str {
        match self {
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
            CacheUse::Bypass => "bypass",
        }
    }
}

/// An answer: series in `query.bucket_starts()` order.
#[derive(Debug, Clone)]
pub struct Answer {
    pub series: Vec<SeriesValues>,
    /// Always false: unique users are exact bitmaps.
    pub approximate: bool,
    pub cache: CacheUse,
}

/// Buckets read per statement at first; later chunks are sized from the
/// rows per bucket seen so far, to about [`CHUNK_ROWS`].
const FIRST_CHUNK: usize = 256;
const CHUNK_ROWS: usize = 100_000;

/// Answers metric queries; one per process, shared by every caller.
pub struct Engine {
    cache: BucketCache,
    names: Names,
    /// Bytes of rollup data one request may hold.
    budget: usize,
}

impl Engine {
    pub fn new(cache_bytes: usize, budget: usize) -> Self {
        Self {
            cache: BucketCache::new(cache_bytes),
            names: Names::default(),
            budget,
        }
    }

    /// Bytes the bucket cache holds (estimated).
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Answers a validated query on `conn` (primary or replica).
    pub async fn answer(&self, conn: &mut AsyncPgConnection, q: &MetricQuery) -> Result<Answer> {
        match q.source() {
            Source::Empty => Ok(zeros(q)),
            Source::Raw => Ok(Answer {
                series: sql::raw(conn, q).await?,
                approximate: false,
                cache: CacheUse::Bypass,
            }),
            Source::Rollup(read) => self.rollup(conn, q, &read).await,
        }
    }

    async fn rollup(
        &self,
        conn: &mut AsyncPgConnection,
        q: &MetricQuery,
        read: &RollupRead,
    ) -> Result<Answer> {
        match self.prepare(conn, q, read).await? {
            Some(prepared) => self.run(conn, &prepared, None).await,
            None => Ok(zeros(q)),
        }
    }

    /// What a rollup answer of `q` reads; `None` when nothing can match
    /// (a value or types no event ever carried).
    async fn prepare<'a>(
        &self,
        conn: &mut AsyncPgConnection,
        q: &'a MetricQuery,
        read: &'a RollupRead,
    ) -> Result<Option<Prepared<'a>>> {
        let dimension = read.dimension.rollup_code().ok_or_else(|| {
            Error::Internal(format!("{:?} has no rollup rows", read.dimension).into())
        })?;
        let value = match &read.value {
            None => None,
            Some(v) => match self.names.value_id(conn, dimension, v).await? {
                Some(id) => Some(id),
                None => return Ok(None),
            },
        };
        let named: &[String] = match &read.types {
            TypeSelection::All => &[],
            TypeSelection::Only(names) => names,
        };
        let types = self.names.types_with(conn, named, &[]).await?;
        let allowed = sql::type_ids(&read.types, &types.by_name);
        if allowed.as_ref().is_some_and(Vec::is_empty) {
            return Ok(None);
        }
        let sets = read.measure == Measure::Users;
        let any_type = (sets && dimension == 0)
            .then(|| read.types == TypeSelection::All && read.group != Dimension::EventType);
        let shape = Shape {
            sets,
            dimension,
            value,
            any_type,
            raw: false,
        };
        let ranges = Ranges::new(q);
        let live = LiveRequest {
            sets,
            dimension,
            value,
            deltas: ranges.deltas,
            start_edge: ranges.start_edge,
            end_edge: ranges.end_edge,
            may_extend: ranges.may_extend,
            end_minute: ceil_to(q.end, 60),
            known_generation: None,
            pageview_type: types.by_name.get("pageview").copied().unwrap_or(-1),
            purchase_type: types.by_name.get("purchase").copied().unwrap_or(-1),
        };
        let job = Job {
            q,
            read,
            shape,
            allowed,
            ranges,
        };
        Ok(Some(Prepared { job, live }))
    }

    /// Answers a prepared query, first from `pre` (its live part, read by a
    /// batch) when given, else reading its own.
    async fn run(
        &self,
        conn: &mut AsyncPgConnection,
        prepared: &Prepared<'_>,
        pre: Option<Live>,
    ) -> Result<Answer> {
        let Prepared { job, live } = prepared;
        if let Some(pre) = pre {
            let request = self.live_request(live);
            if let Some(answer) = self.gather(conn, job, &request, pre).await? {
                return self.finish(conn, job, answer).await;
            }
        }
        for _ in 0..2 {
            if let Some(answer) = self.attempt(conn, job, live).await? {
                return self.finish(conn, job, answer).await;
            }
        }
        // Folds kept landing between the two reads: read both in one
        // snapshot.
        let answer = conn
            .build_transaction()
            .read_only()
            .repeatable_read()
            .run::<_, Error, _>(async |conn| {
                self.attempt(conn, job, live)
                    .await?
                    .ok_or_else(|| Error::Internal("generation changed inside a snapshot".into()))
            })
            .await?;
        self.finish(conn, job, answer).await
    }

    /// Answers many queries that end at the same instant (the alert
    /// evaluator's tick), in order. Queries of one (measure kind,
    /// dimension) that share their end edge read their live parts in one
    /// statement ([`sql::read_live_batch`]): a thousand rules cost a few
    /// statements, not a thousand. Each answer equals [`Engine::answer`]'s;
    /// a query whose batch read fails, or whose buckets were read in another
    /// fold generation, is answered alone. Inside a transaction (the
    /// evaluator's snapshot) a failed statement aborts it, so every later
    /// query of the batch fails too.
    pub async fn answer_batch(
        &self,
        conn: &mut AsyncPgConnection,
        queries: &[MetricQuery],
    ) -> Vec<Result<Answer>> {
        let mut out: Vec<Option<Result<Answer>>> = (0..queries.len()).map(|_| None).collect();
        let reads: Vec<Option<RollupRead>> = queries
            .iter()
            .map(|q| match q.source() {
                Source::Rollup(read) => Some(read),
                _ => None,
            })
            .collect();
        let mut groups: BTreeMap<BatchKey, Vec<(usize, Prepared<'_>)>> = BTreeMap::new();
        for (i, (q, read)) in queries.iter().zip(&reads).enumerate() {
            let Some(read) = read else {
                out[i] = Some(self.answer(conn, q).await);
                continue;
            };
            match self.prepare(conn, q, read).await {
                Ok(Some(p)) => groups
                    .entry(BatchKey::of(&p.live))
                    .or_default()
                    .push((i, p)),
                Ok(None) => out[i] = Some(Ok(zeros(q))),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        for group in groups.into_values() {
            let mut lives = self.read_group(conn, &group).await;
            for ((i, prepared), live) in group.iter().zip(lives.iter_mut()) {
                out[*i] = Some(self.run(conn, prepared, live.take()).await);
            }
        }
        out.into_iter()
            .map(|a| a.unwrap_or_else(|| Err(Error::Internal("query left unanswered".into()))))
            .collect()
    }

    /// The live part of each query of a batch group, read in one statement;
    /// all `None` if that read fails (each query then reads its own).
    async fn read_group(
        &self,
        conn: &mut AsyncPgConnection,
        group: &[(usize, Prepared<'_>)],
    ) -> Vec<Option<Live>> {
        let Some((_, first)) = group.first() else {
            return Vec::new();
        };
        let starts: Vec<(DateTime<Utc>, DateTime<Utc>)> = group
            .iter()
            .map(|(_, p)| p.live.start_edge)
            .filter(|(from, to)| from < to)
            .collect();
        let from = group
            .iter()
            .map(|(_, p)| p.live.deltas.0)
            .min()
            .unwrap_or(first.live.deltas.0);
        let base = LiveRequest {
            deltas: (from, first.live.deltas.1),
            ..self.live_request(&first.live)
        };
        let started = std::time::Instant::now();
        let (shared, edges) = match sql::read_live_batch(conn, &base, &starts).await {
            Ok(read) => {
                tracing::debug!(
                    queries = group.len(),
                    edges = starts.len(),
                    rows = read.0.rows.len(),
                    live_ms = started.elapsed().as_secs_f64() * 1e3,
                    "batch live read"
                );
                read
            }
            Err(error) => {
                tracing::debug!(%error, "batch live read failed; queries read alone");
                return group.iter().map(|_| None).collect();
            }
        };
        self.cache.apply(&shared.log);
        group
            .iter()
            .map(|(_, p)| {
                let own = &p.live;
                let rows = shared
                    .rows
                    .iter()
                    .filter(|r| {
                        own.value.is_none_or(|v| r.value_id == v)
                            && (!r.delta || (r.t >= own.deltas.0 && r.t < own.deltas.1))
                    })
                    .copied()
                    .chain(edges.rows(own.start_edge, own.value))
                    .collect();
                Some(Live {
                    log: shared.log.clone(),
                    horizon: shared.horizon,
                    extend: shared.extend,
                    rows,
                })
            })
            .collect()
    }

    /// `live` with the generation the cache has applied.
    fn live_request(&self, live: &LiveRequest) -> LiveRequest {
        LiveRequest {
            known_generation: self.cache.known_generation(),
            ..live.clone()
        }
    }

    /// One read of the live part and the missing buckets; `None` when a fold
    /// committed between the two reads.
    async fn attempt(
        &self,
        conn: &mut AsyncPgConnection,
        job: &Job<'_>,
        live: &LiveRequest,
    ) -> Result<Option<Merged>> {
        let live_request = self.live_request(live);
        let started = std::time::Instant::now();
        let live: Live = sql::read_live(conn, &live_request).await?;
        tracing::debug!(
            live_ms = started.elapsed().as_secs_f64() * 1e3,
            live_rows = live.rows.len(),
            "live read"
        );
        self.cache.apply(&live.log);
        self.gather(conn, job, &live_request, live).await
    }

    /// The rest of an attempt once its live part is read (and its fold log
    /// applied to the cache): the buckets, from the cache or read.
    async fn gather(
        &self,
        conn: &mut AsyncPgConnection,
        job: &Job<'_>,
        live_request: &LiveRequest,
        live: Live,
    ) -> Result<Option<Merged>> {
        let started = std::time::Instant::now();
        let generation = live.log.generation;
        let q = job.q;
        let end = if live.extend {
            ceil_to(q.end, 60)
        } else {
            q.end
        };
        let series_plan = plan(q.start, end, q.max_resolution());
        let total_plan = (job.shape.sets && q.granularity != Granularity::Total)
            .then(|| plan(q.start, end, 86400));
        let needed = needed_buckets(
            series_plan
                .pieces
                .iter()
                .chain(total_plan.iter().flat_map(|p| p.pieces.iter())),
        );
        let mut got = self.cached(job, needed, &live, generation);
        self.read_raw_minutes(conn, job, live_request, &mut got, generation)
            .await?;
        let cache = if got.missing.is_empty() && got.raw_missing.is_empty() {
            CacheUse::Hit
        } else {
            CacheUse::Miss
        };
        self.check_budget(got.bytes, job.q)?;
        if !self.read_missing(conn, job, &mut got, generation).await? {
            return Ok(None);
        }
        tracing::debug!(
            buckets = got.have.len(),
            missing = got.missing.len(),
            first_missing = ?got.missing.first(),
            read_ms = started.elapsed().as_secs_f64() * 1e3,
            "rollup reads"
        );
        Ok(Some(Merged {
            live,
            raw_minutes: got.raw_minutes,
            have: got.have,
            series_plan: series_plan.pieces,
            total_plan: total_plan.map(|p| p.pieces),
            cache,
        }))
    }

    /// The buckets of `needed` the cache holds valid at `generation`, and
    /// the list of those to read.
    ///
    /// Pages and products older than the minute horizon have no minute
    /// rows: those minutes come from raw events, cached while no delta of
    /// theirs is pending (a pending delta means events the cached read may
    /// not hold; the raw read holds them, so their deltas are dropped from
    /// the merge).
    fn cached(
        &self,
        job: &Job<'_>,
        needed: BTreeMap<i32, Vec<i64>>,
        live: &Live,
        generation: i64,
    ) -> Gathered {
        let raw_before = live
            .horizon
            .filter(|_| job.shape.dimension != 0)
            .map(|h| h.timestamp());
        let mut got = Gathered {
            pending: live
                .rows
                .iter()
                .filter(|r| r.delta)
                .map(|r| r.t.timestamp())
                .collect(),
            ..Gathered::default()
        };
        let raw_shape = Shape {
            raw: true,
            ..job.shape
        };
        for (resolution, list) in needed {
            let (raw, stored): (Vec<i64>, Vec<i64>) = match raw_before {
                Some(h) if resolution == 60 => list.iter().partition(|t| **t < h),
                _ => (Vec::new(), list),
            };
            let (found, _) = self.cache.get(job.shape, resolution, &stored, generation);
            for (t, bucket) in stored.iter().zip(found) {
                match bucket {
                    Some(b) => got.keep((resolution, *t), b),
                    None => got.missing.push((resolution, *t)),
                }
            }
            if raw.is_empty() {
                continue;
            }
            let (found, _) = self.cache.get(raw_shape, 60, &raw, generation);
            for (t, bucket) in raw.iter().zip(found) {
                got.raw_minutes.insert(*t);
                match bucket {
                    Some(b) if !got.pending.contains(t) => got.keep((60, *t), b),
                    _ => got.raw_missing.push(*t),
                }
            }
        }
        got
    }

    /// Reads the raw minutes the cache lacked, run by run, and caches those
    /// with no pending delta.
    async fn read_raw_minutes(
        &self,
        conn: &mut AsyncPgConnection,
        job: &Job<'_>,
        live_request: &LiveRequest,
        got: &mut Gathered,
        generation: i64,
    ) -> Result<()> {
        let raw_shape = Shape {
            raw: true,
            ..job.shape
        };
        for (from, to) in minute_runs(&got.raw_missing) {
            let rows = sql::read_raw_minutes(conn, live_request, from, to).await?;
            let mut fetched: BTreeMap<i64, Bucket> =
                rows.into_iter().map(|((_, t), b)| (t, b)).collect();
            let mut keep = Vec::new();
            let mut t = from.timestamp();
            while t < to.timestamp() {
                let bucket = Arc::new(
                    fetched
                        .remove(&t)
                        .unwrap_or_else(|| empty_bucket(job.shape.sets)),
                );
                if !got.pending.contains(&t) {
                    keep.push((t, bucket.clone()));
                }
                got.keep((60, t), bucket);
                t += 60;
            }
            self.cache.put(raw_shape, 60, keep, generation);
            self.check_budget(got.bytes, job.q)?;
        }
        Ok(())
    }

    /// Reads the missing rollup buckets in chunks sized to about
    /// [`CHUNK_ROWS`] rows, caching each; `false` when a fold committed
    /// since the live read (the caller retries).
    async fn read_missing(
        &self,
        conn: &mut AsyncPgConnection,
        job: &Job<'_>,
        got: &mut Gathered,
        generation: i64,
    ) -> Result<bool> {
        let mut chunk = FIRST_CHUNK;
        let mut read_rows = 0usize;
        let mut read_buckets = 0usize;
        let missing = std::mem::take(&mut got.missing);
        let mut rest = &missing[..];
        while !rest.is_empty() {
            let (now, later) = rest.split_at(chunk.min(rest.len()));
            rest = later;
            let request = BucketRequest {
                sets: job.shape.sets,
                dimension: job.shape.dimension,
                value: job.shape.value,
                any_type: job.shape.any_type,
                runs: runs(now),
            };
            let (read_generation, rows) = sql::read_buckets(conn, &request).await?;
            if read_generation != generation {
                return Ok(false);
            }
            let mut fetched: BTreeMap<(i32, i64), Arc<Bucket>> =
                rows.into_iter().map(|(k, b)| (k, Arc::new(b))).collect();
            let mut by_resolution: BTreeMap<i32, Vec<(i64, Arc<Bucket>)>> = BTreeMap::new();
            for key in now {
                let bucket = fetched
                    .remove(key)
                    .unwrap_or_else(|| Arc::new(empty_bucket(job.shape.sets)));
                read_rows += rows_of(&bucket);
                by_resolution
                    .entry(key.0)
                    .or_default()
                    .push((key.1, bucket.clone()));
                got.keep(*key, bucket);
            }
            read_buckets += now.len();
            self.check_budget(got.bytes, job.q)?;
            for (resolution, list) in by_resolution {
                self.cache.put(job.shape, resolution, list, generation);
            }
            let per_bucket = read_rows.div_ceil(read_buckets.max(1)).max(1);
            chunk = (CHUNK_ROWS / per_bucket).clamp(16, 4096);
        }
        got.missing = missing;
        Ok(true)
    }

    fn check_budget(&self, bytes: usize, q: &MetricQuery) -> Result<()> {
        if bytes > self.budget {
            return Err(Error::ResourceExhausted(format!(
                "this request needs more than {} MiB of rollup data (the --query-memory-bytes limit); \
                 ask for a shorter range, a coarser granularity than {:?}, or filter the dimension",
                self.budget >> 20,
                q.granularity
            )));
        }
        Ok(())
    }

    async fn finish(
        &self,
        conn: &mut AsyncPgConnection,
        job: &Job<'_>,
        merged: Merged,
    ) -> Result<Answer> {
        let cache = merged.cache;
        let started = std::time::Instant::now();
        let totals = if job.shape.sets {
            merge::set_totals(job, &merged)
        } else {
            merge::count_totals(job, &merged)
        };
        let picked = merge::pick(conn, &self.names, job, totals).await?;
        let groups: Vec<u32> = picked.iter().map(|p| p.0).collect();
        let values = if job.shape.sets && job.q.granularity == Granularity::Total {
            // One output bucket: its union is the total just computed.
            picked.iter().map(|p| vec![p.2 as f64]).collect()
        } else if job.shape.sets {
            merge::set_series(job, &merged, &groups)
        } else {
            merge::count_series(job, &merged, &groups)
        };
        let series = merge::assemble(job, picked, values);
        tracing::debug!(
            merge_ms = started.elapsed().as_secs_f64() * 1e3,
            "rollup merge"
        );
        Ok(Answer {
            series,
            approximate: false,
            cache,
        })
    }
}

/// The request being answered, as the merge needs it.
struct Job<'a> {
    q: &'a MetricQuery,
    read: &'a RollupRead,
    shape: Shape,
    /// Type ids that count (`None`: all).
    allowed: Option<Vec<i16>>,
    ranges: Ranges,
}

/// A rollup query ready to read: the request and its live statement.
struct Prepared<'a> {
    job: Job<'a>,
    live: LiveRequest,
}

/// Queries of a batch whose live parts one statement can read: same
/// statement (measure kind, dimension) and same end edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct BatchKey {
    sets: bool,
    dimension: i16,
    end_edge: (DateTime<Utc>, DateTime<Utc>),
    may_extend: bool,
    end_minute: DateTime<Utc>,
    pageview_type: i16,
    purchase_type: i16,
}

impl BatchKey {
    fn of(live: &LiveRequest) -> Self {
        Self {
            sets: live.sets,
            dimension: live.dimension,
            end_edge: live.end_edge,
            may_extend: live.may_extend,
            end_minute: live.end_minute,
            pageview_type: live.pageview_type,
            purchase_type: live.purchase_type,
        }
    }
}

/// The buckets of one attempt, as they are gathered.
#[derive(Default)]
struct Gathered {
    have: BTreeMap<(i32, i64), Arc<Bucket>>,
    /// Rollup buckets the cache lacked, to read.
    missing: Vec<(i32, i64)>,
    /// Minutes read from raw events (past the minute horizon).
    raw_minutes: HashSet<i64>,
    /// Raw minutes the cache lacked, to read.
    raw_missing: Vec<i64>,
    /// Minutes with a pending delta.
    pending: HashSet<i64>,
    /// What `have` weighs, against the request budget.
    bytes: usize,
}

impl Gathered {
    fn keep(&mut self, key: (i32, i64), bucket: Arc<Bucket>) {
        self.bytes += bucket.weight();
        self.have.insert(key, bucket);
    }
}

/// Every bucket start each resolution of `pieces` covers, sorted, once.
fn needed_buckets<'a>(
    pieces: impl Iterator<Item = &'a crate::domain::metric::Piece>,
) -> BTreeMap<i32, Vec<i64>> {
    let mut needed: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for piece in pieces {
        let step = TimeDelta::seconds(i64::from(piece.resolution));
        let list = needed.entry(piece.resolution).or_default();
        let mut t = piece.from;
        while t < piece.to {
            list.push(t.timestamp());
            t += step;
        }
    }
    for list in needed.values_mut() {
        list.sort_unstable();
        list.dedup();
    }
    needed
}

struct Merged {
    live: Live,
    /// Minutes read from raw events: their pending deltas are in them.
    raw_minutes: HashSet<i64>,
    have: BTreeMap<(i32, i64), Arc<Bucket>>,
    series_plan: Vec<crate::domain::metric::Piece>,
    total_plan: Option<Vec<crate::domain::metric::Piece>>,
    cache: CacheUse,
}

/// The minute-aligned part of a request and its sub-minute edges.
#[derive(Debug, Clone, Copy)]
struct Ranges {
    deltas: (DateTime<Utc>, DateTime<Utc>),
    start_edge: (DateTime<Utc>, DateTime<Utc>),
    end_edge: (DateTime<Utc>, DateTime<Utc>),
    /// `end` is inside a minute that may be read whole (see `db::metrics`).
    may_extend: bool,
    /// The last whole minute's end (`floor(end)`): deltas at or after it
    /// count only when the last minute is read whole.
    last_minute: DateTime<Utc>,
}

impl Ranges {
    fn new(q: &MetricQuery) -> Self {
        let a = ceil_to(q.start, 60);
        let b = floor_to(q.end, 60);
        if a > b {
            // Inside one minute: the range is raw events only. (A range
            // that crosses one minute boundary, `a == b`, has two edges,
            // one per minute, like any other.)
            return Self {
                deltas: (a, a),
                start_edge: (q.start, q.end),
                end_edge: (q.end, q.end),
                may_extend: false,
                last_minute: a,
            };
        }
        let may_extend = b < q.end;
        Self {
            deltas: (a, if may_extend { ceil_to(q.end, 60) } else { b }),
            start_edge: if q.start < a { (q.start, a) } else { (a, a) },
            end_edge: if may_extend {
                (b, q.end)
            } else {
                (q.end, q.end)
            },
            may_extend,
            last_minute: b,
        }
    }
}

fn empty_bucket(sets: bool) -> Bucket {
    if sets {
        Bucket::Sets(Vec::new())
    } else {
        Bucket::Counts(CountRows::default())
    }
}

fn rows_of(bucket: &Bucket) -> usize {
    match bucket {
        Bucket::Counts(c) => c.rows.len(),
        Bucket::Sets(s) => s.len(),
    }
}

/// Contiguous runs of minutes (Unix seconds, sorted) as `[from, to)`.
fn minute_runs(minutes: &[i64]) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    runs(&minutes.iter().map(|t| (60, *t)).collect::<Vec<_>>())
        .into_iter()
        .map(|(_, from, to)| (from, to))
        .collect()
}

/// Contiguous runs of buckets of one resolution, for `read_buckets`.
fn runs(keys: &[(i32, i64)]) -> Vec<(i32, DateTime<Utc>, DateTime<Utc>)> {
    let mut out: Vec<(i32, i64, i64)> = Vec::new();
    for &(res, t) in keys {
        match out.last_mut() {
            Some((r, _, to)) if *r == res && *to == t => *to = t + i64::from(res),
            _ => out.push((res, t, t + i64::from(res))),
        }
    }
    out.into_iter()
        .filter_map(|(r, f, t)| {
            Some((
                r,
                DateTime::from_timestamp(f, 0)?,
                DateTime::from_timestamp(t, 0)?,
            ))
        })
        .collect()
}

/// The answer when nothing can match: no series when grouped, else one
/// series of zeros.
fn zeros(q: &MetricQuery) -> Answer {
    Answer {
        series: CountSeries::new(q.bucket_starts().len())
            .finish(q.group_by != Dimension::None, q.limit),
        approximate: false,
        cache: CacheUse::Bypass,
    }
}
