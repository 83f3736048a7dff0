//! Metric queries: the validated request, UTC bucket arithmetic, the plan
//! that splits a range into rollup pieces, pending deltas and raw edges, and
//! the choice of the data source for each metric and filter.
//!
//! Pure: no I/O. `db/metrics.rs` runs what this module decides.

use std::collections::HashMap;

use bigdecimal::{BigDecimal, ToPrimitive, Zero};
use chrono::{DateTime, TimeDelta, Utc};
use roaring::RoaringTreemap;

use super::event::{MAX_ID_LEN, parse_event_type};
use crate::error::{Error, Result};

/// Rollup bucket widths in seconds, finest first.
pub const RESOLUTIONS: [i32; 3] = [60, 3600, 86400];
/// Most buckets in one answer (a week of minutes).
pub const MAX_BUCKETS: usize = 10_080;
/// Most points (buckets × groups) in one answer.
pub const MAX_POINTS: usize = 100_000;
/// Largest `limit` for group_by.
pub const MAX_LIMIT: u32 = 1_000;
/// `limit` when the request leaves it 0.
pub const DEFAULT_LIMIT: u32 = 10;
/// Most event types in one filter.
pub const MAX_FILTER_TYPES: usize = 64;

/// Start of the `seconds`-wide UTC bucket holding `t`.
pub fn floor_to(t: DateTime<Utc>, seconds: i32) -> DateTime<Utc> {
    let s = i64::from(seconds);
    let secs = t.timestamp().div_euclid(s) * s;
    DateTime::from_timestamp(secs, 0).unwrap_or(t)
}

/// The first `seconds`-aligned instant at or after `t`.
pub fn ceil_to(t: DateTime<Utc>, seconds: i32) -> DateTime<Utc> {
    let floor = floor_to(t, seconds);
    if floor == t {
        t
    } else {
        floor + TimeDelta::seconds(i64::from(seconds))
    }
}

named_enum! {
    /// What GetMetrics counts.
    pub enum Metric {
        Events = "events",
        UniqueUsers = "unique_users",
        Pageviews = "pageviews",
        Purchases = "purchases",
        Revenue = "revenue",
        Quantity = "quantity",
    }
}

named_enum! {
    /// The width of output buckets.
    pub enum Granularity {
        Minute = "minute",
        Hour = "hour",
        Day = "day",
        /// One bucket over the whole range.
        Total = "total",
    }
}

impl Granularity {
    /// Bucket width in seconds; `None` for one bucket over the whole range.
    pub fn seconds(self) -> Option<i32> {
        match self {
            Granularity::Minute => Some(60),
            Granularity::Hour => Some(3600),
            Granularity::Day => Some(86400),
            Granularity::Total => None,
        }
    }
}

named_enum! {
    /// What series are grouped by; also the dimensions rollups are kept for.
    pub enum Dimension {
        None = "none",
        EventType = "event_type",
        PageUrl = "page_url",
        ProductId = "product_id",
    }
}

/// Which events count. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    pub event_types: Vec<String>,
    pub page_url: Option<String>,
    pub product_id: Option<String>,
    pub user_id: Option<String>,
}

impl Filter {
    /// Validates and normalizes (sorted, de-duplicated types; "" → None).
    pub fn new(
        mut event_types: Vec<String>,
        page_url: String,
        product_id: String,
        user_id: String,
        max_string_bytes: usize,
    ) -> Result<Self> {
        if event_types.len() > MAX_FILTER_TYPES {
            return Err(Error::InvalidArgument(format!(
                "filter.event_types holds {} types; the limit is {MAX_FILTER_TYPES}",
                event_types.len()
            )));
        }
        for t in &event_types {
            parse_event_type(t)
                .map_err(|r| Error::InvalidArgument(format!("filter.{}", r.reason)))?;
        }
        event_types.sort();
        event_types.dedup();
        let check = |field: &str, value: String, limit: usize| -> Result<Option<String>> {
            if value.len() > limit {
                return Err(Error::InvalidArgument(format!(
                    "filter.{field} is {} bytes long; the limit is {limit}",
                    value.len()
                )));
            }
            // PostgreSQL text cannot hold NUL: refuse it here rather than
            // fail the query.
            if value.contains('\0') {
                return Err(Error::InvalidArgument(format!(
                    "filter.{field} contains a NUL character"
                )));
            }
            Ok((!value.is_empty()).then_some(value))
        };
        Ok(Self {
            event_types,
            page_url: check("page_url", page_url, max_string_bytes)?,
            product_id: check("product_id", product_id, MAX_ID_LEN)?,
            user_id: check("user_id", user_id, MAX_ID_LEN)?,
        })
    }
}

/// A validated GetMetrics request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricQuery {
    pub metric: Metric,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub granularity: Granularity,
    pub filter: Filter,
    pub group_by: Dimension,
    pub limit: u32,
}

impl MetricQuery {
    /// Checks the range, the size of the answer and the limit.
    pub fn new(
        metric: Metric,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        granularity: Granularity,
        filter: Filter,
        group_by: Dimension,
        limit: u32,
    ) -> Result<Self> {
        if start >= end {
            return Err(Error::InvalidArgument(format!(
                "start ({}) must be before end ({})",
                start.to_rfc3339(),
                end.to_rfc3339()
            )));
        }
        if limit > MAX_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "limit {limit} is above the maximum of {MAX_LIMIT}"
            )));
        }
        let limit = if limit == 0 { DEFAULT_LIMIT } else { limit };
        let query = Self {
            metric,
            start,
            end,
            granularity,
            filter,
            group_by,
            limit,
        };
        let buckets = query.bucket_count();
        if buckets > MAX_BUCKETS {
            return Err(Error::InvalidArgument(format!(
                "the request covers {buckets} buckets; the limit is {MAX_BUCKETS}: use a coarser granularity or a shorter range"
            )));
        }
        let groups = if group_by == Dimension::None {
            1
        } else {
            limit as usize
        };
        if buckets * groups > MAX_POINTS {
            return Err(Error::InvalidArgument(format!(
                "the answer would hold {} points ({buckets} buckets × {groups} groups); the limit is {MAX_POINTS}",
                buckets * groups
            )));
        }
        Ok(query)
    }

    fn bucket_count(&self) -> usize {
        match self.granularity.seconds() {
            None => 1,
            Some(s) => {
                let first = floor_to(self.start, s).timestamp();
                let last = self.end.timestamp() + i64::from(self.end.timestamp_subsec_nanos() > 0);
                usize::try_from((last - first + i64::from(s) - 1) / i64::from(s))
                    .unwrap_or(usize::MAX)
            }
        }
    }

    /// Start of every output bucket, in order.
    pub fn bucket_starts(&self) -> Vec<DateTime<Utc>> {
        match self.granularity.seconds() {
            None => vec![self.start],
            Some(s) => {
                let first = floor_to(self.start, s);
                (0..self.bucket_count())
                    .map(|i| first + TimeDelta::seconds(i64::from(s) * i as i64))
                    .collect()
            }
        }
    }

    /// The output bucket of an instant (or of a rollup bucket starting then).
    pub fn bucket_index(&self, t: DateTime<Utc>) -> Option<usize> {
        if t >= self.end {
            return None;
        }
        match self.granularity.seconds() {
            None => (t >= floor_to(self.start, 60)).then_some(0),
            Some(s) => {
                let first = floor_to(self.start, s).timestamp();
                usize::try_from((t.timestamp() - first).div_euclid(i64::from(s))).ok()
            }
        }
    }

    /// The coarsest rollup resolution whose buckets never straddle two
    /// output buckets.
    pub fn max_resolution(&self) -> i32 {
        self.granularity.seconds().unwrap_or(86400)
    }

    /// Where the answer comes from.
    pub fn source(&self) -> Source {
        let f = &self.filter;
        if f.user_id.is_some() {
            return Source::Raw;
        }
        // The dimension whose rollup rows are read: page or product when the
        // request filters or groups on it, else the rows of every event.
        let pages = f.page_url.is_some() || self.group_by == Dimension::PageUrl;
        let products = f.product_id.is_some() || self.group_by == Dimension::ProductId;
        let (dimension, value) = match (pages, products) {
            (true, true) => return Source::Empty,
            (true, false) => (Dimension::PageUrl, f.page_url.clone()),
            (false, true) => (Dimension::ProductId, f.product_id.clone()),
            (false, false) => (Dimension::None, None),
        };
        // The types that can count: what the metric and the dimension imply,
        // then the filter. An empty intersection is provably zero: no I/O.
        let mut types: Option<Vec<String>> = None;
        let implied = [self.metric.implied_type(), dimension.implied_type()];
        for name in implied.into_iter().flatten() {
            types = Some(intersect(types, &[name.to_owned()]));
        }
        if !f.event_types.is_empty() {
            types = Some(intersect(types, &f.event_types));
        }
        let types = match types {
            None => TypeSelection::All,
            Some(names) if names.is_empty() => return Source::Empty,
            Some(names) => TypeSelection::Only(names),
        };
        Source::Rollup(RollupRead {
            measure: self.metric.measure(),
            dimension,
            value,
            types,
            group: self.group_by,
        })
    }
}

/// `names` kept in `current` (all of `names` when `current` is `None`).
fn intersect(current: Option<Vec<String>>, names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = match current {
        None => names.to_vec(),
        Some(current) => current.into_iter().filter(|n| names.contains(n)).collect(),
    };
    out.sort();
    out.dedup();
    out
}

impl Metric {
    /// The one event type this metric counts, if it counts only one.
    fn implied_type(self) -> Option<&'static str> {
        match self {
            Metric::Pageviews => Some("pageview"),
            Metric::Purchases | Metric::Revenue | Metric::Quantity => Some("purchase"),
            Metric::Events | Metric::UniqueUsers => None,
        }
    }

    /// What is summed (or unioned) over the rollup rows.
    fn measure(self) -> Measure {
        match self {
            Metric::Events | Metric::Pageviews | Metric::Purchases => Measure::Events,
            Metric::Quantity => Measure::Quantity,
            Metric::Revenue => Measure::Revenue,
            Metric::UniqueUsers => Measure::Users,
        }
    }
}

impl Dimension {
    /// The only event type whose events carry this dimension.
    fn implied_type(self) -> Option<&'static str> {
        match self {
            Dimension::PageUrl => Some("pageview"),
            Dimension::ProductId => Some("purchase"),
            Dimension::None | Dimension::EventType => None,
        }
    }

    /// The code of this dimension in rollup rows, deltas and the
    /// `dimension_values` dictionary (their `dimension` columns): 0 for the
    /// rows that count every event. `None` for event types, which every
    /// row carries in a column of its own.
    pub fn rollup_code(self) -> Option<i16> {
        match self {
            Dimension::None => Some(0),
            Dimension::PageUrl => Some(1),
            Dimension::ProductId => Some(2),
            Dimension::EventType => None,
        }
    }
}

/// Which event types a rollup read keeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TypeSelection {
    All,
    Only(Vec<String>),
}

/// The data an answer is computed from. Documented in ARCHITECTURE.md
/// ("The path of a query").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// No event can match the filter: zeros, no I/O.
    Empty,
    /// Rollup rows, pending deltas and sub-minute raw edges.
    Rollup(RollupRead),
    /// Raw events through the `(user_id, timestamp)` index (a user filter).
    Raw,
}

/// What a rollup read sums, or unions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measure {
    Events,
    Quantity,
    Revenue,
    /// Distinct users: user sets are unioned, never summed.
    Users,
}

/// Which rollup rows answer a request, and how they combine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRead {
    pub measure: Measure,
    /// `Dimension::None` (every event), `PageUrl` or `ProductId`.
    pub dimension: Dimension,
    /// Only this value of `dimension` (a page or product filter).
    pub value: Option<String>,
    /// Which event types count.
    pub types: TypeSelection,
    /// What the series are grouped by: nothing, the event type, or
    /// `dimension` itself.
    pub group: Dimension,
}

/// A contiguous run of rollup buckets of one resolution: `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub resolution: i32,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// How a range is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Rollup pieces, coarsest possible, covering `aligned` exactly.
    pub pieces: Vec<Piece>,
    /// The minute-aligned part of the range: rollups + pending deltas.
    pub aligned: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Sub-minute edges read from raw events: `[start, first minute)` and
    /// `[last minute, end)`.
    pub raw: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Splits `[start, end)` into rollup pieces no coarser than `max_resolution`
/// and raw edges.
pub fn plan(start: DateTime<Utc>, end: DateTime<Utc>, max_resolution: i32) -> Plan {
    let a = ceil_to(start, 60);
    let b = floor_to(end, 60);
    if a >= b {
        return Plan {
            pieces: vec![],
            aligned: None,
            raw: vec![(start, end)],
        };
    }
    let mut raw = Vec::new();
    if start < a {
        raw.push((start, a));
    }
    if b < end {
        raw.push((b, end));
    }
    let resolutions: Vec<i32> = RESOLUTIONS
        .iter()
        .rev()
        .copied()
        .filter(|r| *r <= max_resolution)
        .collect();
    let mut pieces = Vec::new();
    decompose(a, b, &resolutions, &mut pieces);
    pieces.sort_by_key(|p| p.from);
    Plan {
        pieces,
        aligned: Some((a, b)),
        raw,
    }
}

fn decompose(a: DateTime<Utc>, b: DateTime<Utc>, resolutions: &[i32], out: &mut Vec<Piece>) {
    if a >= b {
        return;
    }
    let Some((&r, finer)) = resolutions.split_first() else {
        return;
    };
    if finer.is_empty() {
        out.push(Piece {
            resolution: r,
            from: a,
            to: b,
        });
        return;
    }
    let (ca, fb) = (ceil_to(a, r), floor_to(b, r));
    if ca >= fb {
        decompose(a, b, finer, out);
        return;
    }
    decompose(a, ca, finer, out);
    out.push(Piece {
        resolution: r,
        from: ca,
        to: fb,
    });
    decompose(fb, b, finer, out);
}

/// One output series before conversion to proto.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesValues {
    pub group: String,
    pub values: Vec<f64>,
    pub total: f64,
}

/// Sums exact values into (group, bucket) cells.
pub struct CountSeries {
    buckets: usize,
    cells: HashMap<String, Vec<BigDecimal>>,
}

impl CountSeries {
    pub fn new(buckets: usize) -> Self {
        Self {
            buckets,
            cells: HashMap::new(),
        }
    }

    pub fn add(&mut self, group: &str, bucket: usize, value: BigDecimal) {
        if bucket >= self.buckets {
            return;
        }
        let buckets = self.buckets;
        let cells = self
            .cells
            .entry(group.to_owned())
            .or_insert_with(|| vec![BigDecimal::zero(); buckets]);
        cells[bucket] += value;
    }

    /// The top `limit` groups by total (ties by name), or the single
    /// ungrouped series (zero-filled even when empty).
    pub fn finish(self, grouped: bool, limit: u32) -> Vec<SeriesValues> {
        let mut series: Vec<(String, Vec<BigDecimal>, BigDecimal)> = self
            .cells
            .into_iter()
            .map(|(group, values)| {
                let total = values.iter().fold(BigDecimal::zero(), |acc, v| acc + v);
                (group, values, total)
            })
            .collect();
        if !grouped {
            let values = series
                .pop()
                .map_or_else(|| vec![BigDecimal::zero(); self.buckets], |s| s.1);
            let total = values.iter().fold(BigDecimal::zero(), |acc, v| acc + v);
            return vec![to_values(String::new(), &values, &total)];
        }
        series.retain(|s| !s.2.is_zero());
        series.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        series.truncate(limit as usize);
        series
            .iter()
            .map(|(g, v, t)| to_values(g.clone(), v, t))
            .collect()
    }
}

fn to_values(group: String, values: &[BigDecimal], total: &BigDecimal) -> SeriesValues {
    SeriesValues {
        group,
        values: values
            .iter()
            .map(|v| v.to_f64().unwrap_or(f64::NAN))
            .collect(),
        total: total.to_f64().unwrap_or(f64::NAN),
    }
}

/// Unions user sets into (group, bucket) cells; a group's total is the
/// union over the whole range, not a sum.
pub struct UserSeries {
    buckets: usize,
    cells: HashMap<String, (Vec<RoaringTreemap>, RoaringTreemap)>,
}

impl UserSeries {
    pub fn new(buckets: usize) -> Self {
        Self {
            buckets,
            cells: HashMap::new(),
        }
    }

    fn cell(&mut self, group: &str) -> &mut (Vec<RoaringTreemap>, RoaringTreemap) {
        let buckets = self.buckets;
        self.cells
            .entry(group.to_owned())
            .or_insert_with(|| (vec![RoaringTreemap::new(); buckets], RoaringTreemap::new()))
    }

    pub fn add_user(&mut self, group: &str, bucket: usize, user: u64) {
        if bucket >= self.buckets {
            return;
        }
        let cell = self.cell(group);
        cell.0[bucket].insert(user);
        cell.1.insert(user);
    }

    pub fn add_set(&mut self, group: &str, bucket: usize, set: &RoaringTreemap) {
        if bucket >= self.buckets {
            return;
        }
        let cell = self.cell(group);
        cell.0[bucket] |= set;
        cell.1 |= set;
    }

    pub fn finish(self, grouped: bool, limit: u32) -> Vec<SeriesValues> {
        let mut series: Vec<SeriesValues> = self
            .cells
            .into_iter()
            .map(|(group, (sets, total))| SeriesValues {
                group,
                values: sets.iter().map(|s| s.len() as f64).collect(),
                total: total.len() as f64,
            })
            .collect();
        if !grouped {
            return vec![series.pop().unwrap_or_else(|| SeriesValues {
                group: String::new(),
                values: vec![0.0; self.buckets],
                total: 0.0,
            })];
        }
        series.retain(|s| s.total > 0.0);
        series.sort_by(|a, b| {
            b.total
                .total_cmp(&a.total)
                .then_with(|| a.group.cmp(&b.group))
        });
        series.truncate(limit as usize);
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 10, h, m, s).unwrap()
    }

    fn query(start: DateTime<Utc>, end: DateTime<Utc>, g: Granularity) -> Result<MetricQuery> {
        MetricQuery::new(
            Metric::Events,
            start,
            end,
            g,
            Filter::default(),
            Dimension::None,
            0,
        )
    }

    #[test]
    fn buckets_are_utc_aligned_and_cover_the_range() {
        let q = query(t(10, 0, 30), t(10, 3, 0), Granularity::Minute).unwrap();
        assert_eq!(
            q.bucket_starts(),
            vec![t(10, 0, 0), t(10, 1, 0), t(10, 2, 0)]
        );
        assert_eq!(q.bucket_index(t(10, 0, 30)), Some(0));
        assert_eq!(q.bucket_index(t(10, 2, 59)), Some(2));
        assert_eq!(q.bucket_index(t(10, 3, 0)), None, "end is exclusive");
        let q = query(t(10, 0, 0), t(10, 3, 1), Granularity::Minute).unwrap();
        assert_eq!(q.bucket_starts().len(), 4);
        let q = query(t(10, 5, 0), t(13, 0, 0), Granularity::Total).unwrap();
        assert_eq!(q.bucket_starts(), vec![t(10, 5, 0)]);
    }

    #[test]
    fn bad_ranges_and_oversized_answers_are_refused() {
        assert!(query(t(10, 0, 0), t(10, 0, 0), Granularity::Minute).is_err());
        assert!(query(t(11, 0, 0), t(10, 0, 0), Granularity::Minute).is_err());
        let year = Utc.with_ymd_and_hms(2025, 3, 10, 0, 0, 0).unwrap();
        let e = query(year, t(0, 0, 0), Granularity::Minute).unwrap_err();
        assert!(e.to_string().contains("buckets"), "{e}");
        assert!(query(year, t(0, 0, 0), Granularity::Day).is_ok());
        let e = MetricQuery::new(
            Metric::Events,
            t(0, 0, 0),
            t(23, 0, 0),
            Granularity::Minute,
            Filter::default(),
            Dimension::PageUrl,
            1000,
        )
        .unwrap_err();
        assert!(e.to_string().contains("points"), "{e}");
    }

    #[test]
    fn plans_use_the_coarsest_pieces_and_raw_edges() {
        let start = Utc.with_ymd_and_hms(2026, 3, 8, 22, 30, 15).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 3, 10, 1, 10, 0).unwrap();
        let p = plan(start, end, 86400);
        assert_eq!(
            p.raw,
            vec![(start, Utc.with_ymd_and_hms(2026, 3, 8, 22, 31, 0).unwrap())]
        );
        let shape: Vec<(i32, String, String)> = p
            .pieces
            .iter()
            .map(|p| {
                (
                    p.resolution,
                    p.from.format("%d %H:%M").to_string(),
                    p.to.format("%d %H:%M").to_string(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (60, "08 22:31".into(), "08 23:00".into()),
                (3600, "08 23:00".into(), "09 00:00".into()),
                (86400, "09 00:00".into(), "10 00:00".into()),
                (3600, "10 00:00".into(), "10 01:00".into()),
                (60, "10 01:00".into(), "10 01:10".into()),
            ]
        );
        // Minute granularity may only use minute pieces.
        let p = plan(start, end, 60);
        assert!(p.pieces.iter().all(|p| p.resolution == 60));
        // A range inside one minute is all raw.
        let p = plan(t(10, 0, 5), t(10, 0, 50), 86400);
        assert_eq!(p.raw, vec![(t(10, 0, 5), t(10, 0, 50))]);
        assert!(p.pieces.is_empty() && p.aligned.is_none());
    }

    #[test]
    #[allow(clippy::too_many_lines)] // one table of cases
    fn sources_follow_metric_and_filter() {
        let q = |metric, filter: Filter, group_by| MetricQuery {
            metric,
            start: t(0, 0, 0),
            end: t(1, 0, 0),
            granularity: Granularity::Total,
            filter,
            group_by,
            limit: 10,
        };
        let only = |types: &[&str]| Filter {
            event_types: types.iter().map(std::string::ToString::to_string).collect(),
            ..Filter::default()
        };
        let page = Filter {
            page_url: Some("/".into()),
            ..Filter::default()
        };
        let read = |measure, dimension, value: Option<&str>, types: Option<&[&str]>, group| {
            Source::Rollup(RollupRead {
                measure,
                dimension,
                value: value.map(str::to_owned),
                types: match types {
                    None => TypeSelection::All,
                    Some(t) => TypeSelection::Only(
                        t.iter().map(std::string::ToString::to_string).collect(),
                    ),
                },
                group,
            })
        };
        assert_eq!(
            q(Metric::Events, Filter::default(), Dimension::EventType).source(),
            read(
                Measure::Events,
                Dimension::None,
                None,
                None,
                Dimension::EventType
            )
        );
        assert_eq!(
            q(Metric::Revenue, only(&["click"]), Dimension::None).source(),
            Source::Empty
        );
        assert_eq!(
            q(Metric::Revenue, Filter::default(), Dimension::ProductId).source(),
            read(
                Measure::Revenue,
                Dimension::ProductId,
                None,
                Some(&["purchase"]),
                Dimension::ProductId
            )
        );
        assert_eq!(
            q(Metric::Pageviews, Filter::default(), Dimension::None).source(),
            read(
                Measure::Events,
                Dimension::None,
                None,
                Some(&["pageview"]),
                Dimension::None
            )
        );
        assert_eq!(
            q(Metric::Events, Filter::default(), Dimension::PageUrl).source(),
            read(
                Measure::Events,
                Dimension::PageUrl,
                None,
                Some(&["pageview"]),
                Dimension::PageUrl
            )
        );
        // Unique users of a page: its stored sets.
        assert_eq!(
            q(Metric::UniqueUsers, page.clone(), Dimension::None).source(),
            read(
                Measure::Users,
                Dimension::PageUrl,
                Some("/"),
                Some(&["pageview"]),
                Dimension::None
            )
        );
        // Provably zero: clicks never carry a page.
        let clicks_on_page = Filter {
            event_types: vec!["click".into()],
            ..page.clone()
        };
        assert_eq!(
            q(Metric::UniqueUsers, clicks_on_page, Dimension::None).source(),
            Source::Empty
        );
        assert_eq!(
            q(Metric::Pageviews, Filter::default(), Dimension::ProductId).source(),
            Source::Empty
        );
        assert_eq!(
            q(
                Metric::Pageviews,
                Filter {
                    user_id: Some("u".into()),
                    ..Filter::default()
                },
                Dimension::None
            )
            .source(),
            Source::Raw
        );
    }

    #[test]
    fn top_groups_by_total_then_name() {
        let mut s = CountSeries::new(2);
        s.add("b", 0, BigDecimal::from(3));
        s.add("a", 1, BigDecimal::from(3));
        s.add("c", 0, BigDecimal::from(1));
        let out = s.finish(true, 2);
        assert_eq!(
            out.iter().map(|s| s.group.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        let empty = CountSeries::new(3).finish(false, 10);
        assert_eq!(empty[0].values, vec![0.0; 3]);
    }
}
