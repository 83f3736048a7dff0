//! Merging rollup buckets and live rows into ranked series, in two passes:
//! totals per group over the whole range, then the series of the top
//! `limit` groups only. Nothing is held per (group × bucket) but for the
//! winners; the rows themselves are the cached buckets, shared, not copied.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use diesel_async::AsyncPgConnection;
use roaring::RoaringTreemap;
use rustc_hash::{FxHashMap, FxHashSet};

use super::cache::{Bucket, Sales, UserSet};
use super::names::Names;
use super::{Job, Merged};
use crate::db::metrics::LiveRow;
use crate::domain::metric::{Dimension, Measure, MetricQuery, Piece, SeriesValues};
use crate::error::Result;

/// Revenue is carried in 1/10,000 of the unit.
const REVENUE_SCALE: f64 = 10_000.0;

/// The output bucket of a rollup bucket start or an event time; TOTAL
/// rows all land in the one bucket.
fn index_of(q: &MetricQuery, t: DateTime<Utc>) -> Option<usize> {
    if q.granularity.seconds().is_none() {
        (t < q.end).then_some(0)
    } else {
        q.bucket_index(t)
    }
}

fn group_key(group: Dimension, type_id: i16, value_id: i32) -> u32 {
    match group {
        Dimension::None => 0,
        Dimension::EventType => u32::from(type_id as u16),
        Dimension::PageUrl | Dimension::ProductId => value_id as u32,
    }
}

impl Job<'_> {
    fn counts_type(&self, type_id: i16) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(&type_id))
    }

    fn key(&self, type_id: i16, value_id: i32) -> u32 {
        group_key(self.read.group, type_id, value_id)
    }

    fn measure(&self, events: i64, sales: Sales) -> i128 {
        match self.read.measure {
            Measure::Events => i128::from(events),
            Measure::Quantity => i128::from(sales.quantity),
            Measure::Revenue => sales.revenue,
            Measure::Users => 0,
        }
    }

    /// Whether a live row counts: deltas of the partial last minute count
    /// only when that minute is read whole (else its edge events do).
    /// Deltas of minutes read from raw events are in those reads already.
    fn live_counts(&self, merged: &Merged, row: &LiveRow) -> bool {
        let superseded = row.delta
            && ((row.t >= self.ranges.last_minute && !merged.live.extend)
                || merged.raw_minutes.contains(&row.t.timestamp()));
        !superseded && self.counts_type(row.type_id)
    }
}

/// Every rollup bucket of `pieces` that was read, with its start.
fn buckets<'a>(
    merged: &'a Merged,
    pieces: &'a [Piece],
) -> impl Iterator<Item = (DateTime<Utc>, &'a Bucket)> + 'a {
    pieces.iter().flat_map(move |p| {
        let step = TimeDelta::seconds(i64::from(p.resolution));
        std::iter::successors(Some(p.from), move |t| Some(*t + step))
            .take_while(move |t| *t < p.to)
            .filter_map(move |t| {
                merged
                    .have
                    .get(&(p.resolution, t.timestamp()))
                    .map(|b| (t, &**b))
            })
    })
}

/// Calls `f(output bucket, group, value)` for every count that falls in
/// the range.
fn visit_counts(job: &Job<'_>, merged: &Merged, mut f: impl FnMut(usize, u32, i128)) {
    let q = job.q;
    for (t, bucket) in buckets(merged, &merged.series_plan) {
        let (Bucket::Counts(c), Some(i)) = (bucket, index_of(q, t)) else {
            continue;
        };
        for (k, row) in c.rows.iter().enumerate() {
            if !job.counts_type(row.type_id) {
                continue;
            }
            let sales = c.sales.get(k).copied().unwrap_or_default();
            let v = job.measure(row.events, sales);
            if v != 0 {
                f(i, job.key(row.type_id, row.value_id), v);
            }
        }
    }
    for row in &merged.live.rows {
        if !job.live_counts(merged, row) {
            continue;
        }
        let Some(i) = index_of(q, row.t) else {
            continue;
        };
        let v = job.measure(row.n, row.sales);
        if v != 0 {
            f(i, job.key(row.type_id, row.value_id), v);
        }
    }
}

/// Totals per group.
pub(super) fn count_totals(job: &Job<'_>, merged: &Merged) -> Vec<(u32, i128)> {
    let mut totals: FxHashMap<u32, i128> = FxHashMap::default();
    visit_counts(job, merged, |_, g, v| *totals.entry(g).or_default() += v);
    totals.into_iter().collect()
}

/// Series of the chosen groups, in their order.
pub(super) fn count_series(job: &Job<'_>, merged: &Merged, groups: &[u32]) -> Vec<Vec<f64>> {
    let buckets = job.q.bucket_starts().len();
    let index: FxHashMap<u32, usize> = groups.iter().enumerate().map(|(i, g)| (*g, i)).collect();
    let mut values = vec![vec![0i128; buckets]; groups.len()];
    visit_counts(job, merged, |i, g, v| {
        if let (Some(&s), true) = (index.get(&g), i < buckets) {
            values[s][i] += v;
        }
    });
    let scale = if job.read.measure == Measure::Revenue {
        REVENUE_SCALE
    } else {
        1.0
    };
    values
        .into_iter()
        .map(|s| s.into_iter().map(|v| v as f64 / scale).collect())
        .collect()
}

/// Calls `set(output bucket, group, users)` for every stored set of
/// `pieces` and `user(output bucket, group, user)` for every live row.
fn visit_sets<'a>(
    job: &Job<'_>,
    merged: &'a Merged,
    pieces: &'a [Piece],
    mut set: impl FnMut(usize, u32, &'a UserSet),
    mut user: impl FnMut(usize, u32, u64),
) {
    let q = job.q;
    for (t, bucket) in buckets(merged, pieces) {
        let (Bucket::Sets(rows), Some(i)) = (bucket, index_of(q, t)) else {
            continue;
        };
        for row in rows {
            // Any-type sets carry type 0; a type filter never reads them.
            if row.type_id != 0 && !job.counts_type(row.type_id) {
                continue;
            }
            set(i, job.key(row.type_id, row.value_id), &row.users);
        }
    }
    for row in &merged.live.rows {
        if !job.live_counts(merged, row) {
            continue;
        }
        let Some(i) = index_of(q, row.t) else {
            continue;
        };
        if let Ok(u) = u64::try_from(row.n) {
            user(i, job.key(row.type_id, row.value_id), u);
        }
    }
}

/// Distinct users per group over the whole range, from the coarsest plan.
///
/// When grouped, groups that cannot reach the top `limit` are left out
/// before any union is computed: a group's union is at least its largest
/// part and at most the sum of its parts, so with T the `limit`-th largest
/// lower bound, every group of the true top `limit` (ties included) has an
/// upper bound of at least T. Only those candidates are unioned, largest
/// upper bound first, and only until the exact `limit`-th size found beats
/// every bound left ([`top_unions`]).
pub(super) fn set_totals(job: &Job<'_>, merged: &Merged) -> Vec<(u32, i128)> {
    let pieces = merged.total_plan.as_deref().unwrap_or(&merged.series_plan);
    let bounds = std::cell::RefCell::new(FxHashMap::<u32, (u64, u64)>::default());
    visit_sets(
        job,
        merged,
        pieces,
        |_, g, s| {
            let n = s.len();
            let mut b = bounds.borrow_mut();
            let b = b.entry(g).or_default();
            b.0 = b.0.max(n);
            b.1 += n;
        },
        |_, g, _| {
            let mut b = bounds.borrow_mut();
            let b = b.entry(g).or_default();
            b.0 = b.0.max(1);
            b.1 += 1;
        },
    );
    let bounds = bounds.into_inner();
    let limit = job.q.limit as usize;
    let candidates: Option<FxHashSet<u32>> =
        (job.q.group_by != Dimension::None && bounds.len() > limit).then(|| {
            let mut lowers: Vec<u64> = bounds.values().map(|b| b.0).collect();
            lowers.sort_unstable_by(|a, b| b.cmp(a));
            let threshold = lowers[limit - 1];
            bounds
                .iter()
                .filter(|(_, b)| b.1 >= threshold)
                .map(|(g, _)| *g)
                .collect()
        });
    let Some(candidates) = candidates else {
        let totals = std::cell::RefCell::new(FxHashMap::<u32, RoaringTreemap>::default());
        visit_sets(
            job,
            merged,
            pieces,
            |_, g, s| s.union_into(totals.borrow_mut().entry(g).or_default()),
            |_, g, u| {
                totals.borrow_mut().entry(g).or_default().insert(u);
            },
        );
        return totals
            .into_inner()
            .into_iter()
            .map(|(g, s)| (g, i128::from(s.len())))
            .collect();
    };
    let parts = std::cell::RefCell::new(FxHashMap::<u32, Parts<'_>>::default());
    visit_sets(
        job,
        merged,
        pieces,
        |_, g, s| {
            if candidates.contains(&g) {
                parts.borrow_mut().entry(g).or_default().0.push(s);
            }
        },
        |_, g, u| {
            if candidates.contains(&g) {
                parts.borrow_mut().entry(g).or_default().1.push(u);
            }
        },
    );
    top_unions(parts.into_inner(), &bounds, limit)
}

/// The stored sets and live users of one group.
type Parts<'a> = (Vec<&'a UserSet>, Vec<u64>);

/// Exact unions of the candidates, largest upper bound first, until no
/// candidate left can reach the `limit`-th exact size found so far (nor
/// tie with it): unions past that point cannot change the top `limit`.
fn top_unions(
    mut parts: FxHashMap<u32, Parts<'_>>,
    bounds: &FxHashMap<u32, (u64, u64)>,
    limit: usize,
) -> Vec<(u32, i128)> {
    let mut order: Vec<(u32, u64)> = parts
        .keys()
        .map(|g| (*g, bounds.get(g).map_or(u64::MAX, |b| b.1)))
        .collect();
    order.sort_unstable_by_key(|o| std::cmp::Reverse(o.1));
    let mut best = std::collections::BinaryHeap::new();
    let mut out = Vec::new();
    for (g, upper) in order {
        if best.len() == limit
            && best
                .peek()
                .is_some_and(|std::cmp::Reverse(kth)| upper < *kth)
        {
            break;
        }
        let Some((sets, users)) = parts.remove(&g) else {
            continue;
        };
        let mut union = RoaringTreemap::new();
        for s in sets {
            s.union_into(&mut union);
        }
        union.extend(users);
        let n = union.len();
        out.push((g, i128::from(n)));
        best.push(std::cmp::Reverse(n));
        if best.len() > limit {
            best.pop();
        }
    }
    out
}

/// A union being built: most output buckets hold exactly one stored set,
/// whose size is known without copying it.
enum Union<'a> {
    Empty,
    One(&'a UserSet),
    Many(RoaringTreemap),
}

impl<'a> Union<'a> {
    fn add_set(&mut self, s: &'a UserSet) {
        *self = match std::mem::replace(self, Union::Empty) {
            Union::Empty => Union::One(s),
            Union::One(a) => {
                let mut m = a.to_bitmap();
                s.union_into(&mut m);
                Union::Many(m)
            }
            Union::Many(mut m) => {
                s.union_into(&mut m);
                Union::Many(m)
            }
        };
    }

    fn add_user(&mut self, u: u64) {
        let mut m = match std::mem::replace(self, Union::Empty) {
            Union::Empty => RoaringTreemap::new(),
            Union::One(a) => a.to_bitmap(),
            Union::Many(m) => m,
        };
        m.insert(u);
        *self = Union::Many(m);
    }

    fn len(&self) -> u64 {
        match self {
            Union::Empty => 0,
            Union::One(a) => a.len(),
            Union::Many(m) => m.len(),
        }
    }
}

/// Distinct users per output bucket of the chosen groups.
pub(super) fn set_series(job: &Job<'_>, merged: &Merged, groups: &[u32]) -> Vec<Vec<f64>> {
    let buckets = job.q.bucket_starts().len();
    let index: FxHashMap<u32, usize> = groups.iter().enumerate().map(|(i, g)| (*g, i)).collect();
    let cells = std::cell::RefCell::new(
        (0..groups.len())
            .map(|_| (0..buckets).map(|_| Union::Empty).collect::<Vec<_>>())
            .collect::<Vec<_>>(),
    );
    visit_sets(
        job,
        merged,
        &merged.series_plan,
        |i, g, s| {
            if let (Some(&k), true) = (index.get(&g), i < buckets) {
                cells.borrow_mut()[k][i].add_set(s);
            }
        },
        |i, g, u| {
            if let (Some(&k), true) = (index.get(&g), i < buckets) {
                cells.borrow_mut()[k][i].add_user(u);
            }
        },
    );
    cells
        .into_inner()
        .into_iter()
        .map(|s| s.iter().map(|u| u.len() as f64).collect())
        .collect()
}

/// The groups to answer with, named, best first: every group when not
/// grouped (one series, even of zeros), else the top `limit` by total then
/// name, leaving out groups whose total is zero.
pub(super) async fn pick(
    conn: &mut AsyncPgConnection,
    names: &Names,
    job: &Job<'_>,
    mut ranked: Vec<(u32, i128)>,
) -> Result<Vec<(u32, String, i128)>> {
    let q = job.q;
    if q.group_by == Dimension::None {
        let total = ranked.first().map_or(0, |r| r.1);
        return Ok(vec![(0, String::new(), total)]);
    }
    ranked.retain(|r| r.1 != 0);
    ranked.sort_unstable_by_key(|r| std::cmp::Reverse(r.1));
    let limit = q.limit as usize;
    if ranked.len() > limit {
        // Groups tied with the last one that fits compete by name.
        let cutoff = ranked[limit - 1].1;
        let keep = ranked
            .iter()
            .rposition(|r| r.1 == cutoff)
            .map_or(limit, |p| p + 1);
        ranked.truncate(keep);
    }
    let keys: Vec<u32> = ranked.iter().map(|r| r.0).collect();
    let named: HashMap<u32, Arc<str>> = if job.read.group == Dimension::EventType {
        let ids: Vec<i16> = keys.iter().map(|k| *k as u16 as i16).collect();
        let types = names.types_with(conn, &[], &ids).await?;
        ids.iter()
            .filter_map(|i| Some((u32::from(*i as u16), types.by_id.get(i)?.as_str().into())))
            .collect()
    } else {
        let ids: Vec<i32> = keys.iter().map(|k| *k as i32).collect();
        names
            .values(conn, &ids)
            .await?
            .into_iter()
            .map(|(i, n)| (i as u32, n))
            .collect()
    };
    let mut out: Vec<(u32, String, i128)> = ranked
        .into_iter()
        .map(|(k, total)| {
            let name = named
                .get(&k)
                .map(std::string::ToString::to_string)
                .unwrap_or_default();
            (k, name, total)
        })
        .collect();
    out.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
    out.truncate(limit);
    Ok(out)
}

/// Series values with their group names and totals.
pub(super) fn assemble(
    job: &Job<'_>,
    picked: Vec<(u32, String, i128)>,
    values: Vec<Vec<f64>>,
) -> Vec<SeriesValues> {
    let scale = if job.read.measure == Measure::Revenue {
        REVENUE_SCALE
    } else {
        1.0
    };
    picked
        .into_iter()
        .zip(values)
        .map(|((_, group, total), values)| SeriesValues {
            group,
            values,
            total: total as f64 / scale,
        })
        .collect()
}
