//! The bucket cache: rollup buckets that earlier requests read, kept per
//! (shape, resolution, bucket start) and reused by every later request whose
//! plan covers them, for as long as no fold has touched them.
//!
//! # Why an entry can never be stale
//!
//! Rollup rows change only in folds. Each fold bumps `fold_generation` and
//! logs the minutes (or only the hours) it touched in `rollup_folds`, in its
//! own transaction. Every request reads, in the snapshot of its live part,
//! the generation G of that snapshot and the log rows above what this
//! process has applied, and applies them here ([`BucketCache::apply`])
//! before it looks anything up or inserts anything. `touches` then holds,
//! per minute, hour and day, the last generation that changed it.
//!
//! An entry read at generation g is used by a request at generation G only
//! when the last fold that touched its bucket is at or below min(g, G): no
//! fold in between changed it, so its rows are exactly what the request's
//! own snapshot holds. Entries are inserted only at generations whose log
//! is applied, so no touch at or below g can be missing from `touches` when
//! a g-entry is checked. When `touches` is pruned (or the log was pruned
//! before this process read it), `floor` rises and everything read below it
//! is dropped.
//!
//! # Memory
//!
//! Entries are weighed in bytes (rows × their size, serialized bitmap
//! sizes) and the least recently used are evicted beyond `max_bytes`. An
//! entry stays alive while a request holds its `Arc`, so a request never
//! loses rows it is merging.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use roaring::RoaringTreemap;

/// Touched minutes, hours and days remembered before `touches` is pruned.
const MAX_TOUCHES: usize = 200_000;

/// What kind of rows a request reads, and which of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// User sets (`rollup_sets`) rather than counts (`rollup_counts`).
    pub sets: bool,
    /// `rollup_*.dimension`.
    pub dimension: i16,
    /// One value of the dimension only.
    pub value: Option<i32>,
    /// For sets of dimension 0: only the any-type sets (type 0), or only
    /// the per-type sets.
    pub any_type: Option<bool>,
    /// Minutes read from raw events (pages and products older than the
    /// minute horizon), not from rollup rows: usable only while no delta of
    /// their minute is pending (see `query::Engine`).
    pub raw: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    shape: Shape,
    resolution: i32,
    /// Unix seconds of the bucket start.
    bucket: i64,
}

/// Counts of one bucket: one row per (value, event type).
#[derive(Debug, Default)]
pub struct CountRows {
    pub rows: Vec<CountRow>,
    /// Empty, or one entry per row (only rows of purchases carry sales).
    pub sales: Vec<Sales>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRow {
    pub events: i64,
    pub value_id: i32,
    pub type_id: i16,
}

/// Quantity and revenue (in 1/10,000 of the currency unit: exact).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sales {
    pub quantity: i64,
    pub revenue: i128,
}

/// The users of one (value, event type) in one bucket.
#[derive(Debug)]
pub struct SetRow {
    pub value_id: i32,
    pub type_id: i16,
    pub users: UserSet,
}

/// Most users a set keeps as a plain sorted list: a page seen by two users
/// in a minute costs 16 bytes instead of a Roaring bitmap's few hundred.
const FEW: usize = 32;

/// A set of `users.user_id`, compact when small.
#[derive(Debug, Clone, PartialEq)]
pub enum UserSet {
    /// Sorted, distinct.
    Few(Box<[u64]>),
    Many(RoaringTreemap),
}

impl UserSet {
    pub fn from_bitmap(set: RoaringTreemap) -> Self {
        if set.len() as usize <= FEW {
            UserSet::Few(set.iter().collect())
        } else {
            UserSet::Many(set)
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            UserSet::Few(ids) => ids.len() as u64,
            UserSet::Many(set) => set.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds every user of this set to `into`.
    pub fn union_into(&self, into: &mut RoaringTreemap) {
        match self {
            UserSet::Few(ids) => into.extend(ids.iter().copied()),
            UserSet::Many(set) => *into |= set,
        }
    }

    /// The set as a bitmap.
    pub fn to_bitmap(&self) -> RoaringTreemap {
        match self {
            UserSet::Few(ids) => ids.iter().copied().collect(),
            UserSet::Many(set) => set.clone(),
        }
    }

    /// Bytes held, estimated: a bitmap's containers and the map around them.
    fn weight(&self) -> usize {
        match self {
            UserSet::Few(ids) => 16 + ids.len() * 8,
            UserSet::Many(set) => 256 + set.serialized_size() * 2,
        }
    }
}

/// The rows of one rollup bucket for one shape.
#[derive(Debug)]
pub enum Bucket {
    Counts(CountRows),
    Sets(Vec<SetRow>),
}

impl Bucket {
    /// Estimated bytes held.
    pub fn weight(&self) -> usize {
        64 + match self {
            Bucket::Counts(c) => {
                c.rows.len() * std::mem::size_of::<CountRow>()
                    + c.sales.len() * std::mem::size_of::<Sales>()
            }
            Bucket::Sets(rows) => rows
                .iter()
                .map(|r| std::mem::size_of::<SetRow>() + r.users.weight())
                .sum(),
        }
    }
}

/// One fold log row as read by a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The fold changed this minute (and its hour and day).
    Minute(i64),
    /// The fold changed some minutes of this hour (and the hour and day).
    Hour(i64),
    /// Every bucket may have changed (a rebuild, a migration).
    Everything,
}

#[derive(Default)]
struct Touches {
    /// Minute start → last generation that touched it (minute-precise logs).
    minutes: HashMap<i64, i64>,
    /// Hour start → last generation known only to have touched the hour.
    coarse_hours: HashMap<i64, i64>,
    /// Hour start → last generation that touched any of its minutes.
    hours: HashMap<i64, i64>,
    /// Day start → last generation that touched any of its minutes.
    days: HashMap<i64, i64>,
    /// Last generation that touched everything.
    everything: i64,
}

impl Touches {
    fn add(&mut self, generation: i64, touch: Touch) {
        let raise = |map: &mut HashMap<i64, i64>, at: i64| {
            let slot = map.entry(at).or_insert(generation);
            *slot = (*slot).max(generation);
        };
        match touch {
            Touch::Minute(m) => {
                raise(&mut self.minutes, m);
                raise(&mut self.hours, m.div_euclid(3600) * 3600);
                raise(&mut self.days, m.div_euclid(86400) * 86400);
            }
            Touch::Hour(h) => {
                raise(&mut self.coarse_hours, h);
                raise(&mut self.hours, h);
                raise(&mut self.days, h.div_euclid(86400) * 86400);
            }
            Touch::Everything => self.everything = self.everything.max(generation),
        }
    }

    /// The last generation that touched the bucket (0: none known).
    fn last(&self, resolution: i32, bucket: i64) -> i64 {
        let get = |map: &HashMap<i64, i64>, at: i64| map.get(&at).copied().unwrap_or(0);
        let own = match resolution {
            60 => get(&self.minutes, bucket)
                .max(get(&self.coarse_hours, bucket.div_euclid(3600) * 3600)),
            3600 => get(&self.hours, bucket),
            _ => get(&self.days, bucket),
        };
        own.max(self.everything)
    }

    fn len(&self) -> usize {
        self.minutes.len() + self.coarse_hours.len() + self.hours.len() + self.days.len()
    }
}

struct Slot {
    generation: i64,
    bucket: Arc<Bucket>,
    weight: usize,
    used: u64,
}

#[derive(Default)]
struct Inner {
    /// Fx-hashed: a request looks up every bucket of its plan (1,440 for a
    /// day of minutes), and the keys are small integers.
    entries: rustc_hash::FxHashMap<Key, Slot>,
    bytes: usize,
    tick: u64,
    touches: Touches,
    /// Generation up to which the fold log has been applied.
    known: Option<i64>,
    /// Entries read below this generation are unusable.
    floor: i64,
}

impl Inner {
    fn flush(&mut self, generation: i64) {
        self.entries.clear();
        self.bytes = 0;
        self.touches = Touches::default();
        self.floor = self.floor.max(generation);
    }

    fn valid(&self, key: &Key, entry_generation: i64, generation: i64) -> bool {
        let low = entry_generation.min(generation);
        low >= self.floor && self.touches.last(key.resolution, key.bucket) <= low
    }
}

/// What [`BucketCache::apply`] needs from a request's snapshot.
#[derive(Debug, Clone, Default)]
pub struct FoldLog {
    /// `rollup_state.fold_generation` of the snapshot.
    pub generation: i64,
    /// The lowest generation still in `rollup_folds` (None: empty).
    pub oldest: Option<i64>,
    /// The log rows above the generation the request asked from.
    pub rows: Vec<(i64, Touch)>,
}

/// Rollup buckets of recent requests. Shared by every request of a process.
pub struct BucketCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

/// How many lookups a request answered from the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    pub hits: usize,
    pub misses: usize,
}

impl BucketCache {
    /// A cache of at most `max_bytes` (estimated); 0 keeps nothing.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a cache that is at worst
        // incomplete, never wrong: entries are inserted whole.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The generation from which a request should read the fold log, or
    /// `None` when this process has not read it yet.
    pub fn known_generation(&self) -> Option<i64> {
        self.lock().known
    }

    /// Applies what a request read of the fold log. Must run before that
    /// request looks up or inserts anything.
    pub fn apply(&self, log: &FoldLog) {
        let mut inner = self.lock();
        match inner.known {
            None => {
                // Nothing cached yet: nothing to invalidate, but entries
                // read by older snapshots must not be trusted.
                inner.flush(log.generation);
            }
            Some(known) => {
                // The log rows between `known` and `oldest` were pruned
                // before this process read them: start over.
                if known < log.generation && log.oldest.is_none_or(|o| o > known + 1) {
                    inner.flush(log.generation);
                } else {
                    for (generation, touch) in &log.rows {
                        inner.touches.add(*generation, *touch);
                        if *touch == Touch::Everything {
                            inner.floor = inner.floor.max(*generation);
                        }
                    }
                }
            }
        }
        inner.known = Some(inner.known.unwrap_or(0).max(log.generation));
        if inner.touches.len() > MAX_TOUCHES {
            let known = inner.known.unwrap_or(0);
            inner.flush(known);
        }
    }

    /// The cached buckets of `shape` at `resolution` starting at `buckets`
    /// (Unix seconds) that are valid at `generation`; `None` where missing.
    pub fn get(
        &self,
        shape: Shape,
        resolution: i32,
        buckets: &[i64],
        generation: i64,
    ) -> (Vec<Option<Arc<Bucket>>>, Lookup) {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let mut found = Vec::with_capacity(buckets.len());
        let mut lookup = Lookup::default();
        for &bucket in buckets {
            let key = Key {
                shape,
                resolution,
                bucket,
            };
            let hit = match inner.entries.get(&key) {
                Some(slot) if inner.valid(&key, slot.generation, generation) => true,
                Some(slot) => {
                    // Touched after it was read: useless to this and every
                    // later snapshot, so free it now.
                    if slot.generation <= generation
                        && let Some(slot) = inner.entries.remove(&key)
                    {
                        inner.bytes -= slot.weight;
                    }
                    false
                }
                None => false,
            };
            if hit && let Some(slot) = inner.entries.get_mut(&key) {
                slot.used = tick;
                found.push(Some(slot.bucket.clone()));
                lookup.hits += 1;
            } else {
                found.push(None);
                lookup.misses += 1;
            }
        }
        (found, lookup)
    }

    /// Keeps buckets read at `generation` (whose fold log has been applied).
    pub fn put(
        &self,
        shape: Shape,
        resolution: i32,
        buckets: Vec<(i64, Arc<Bucket>)>,
        generation: i64,
    ) {
        if self.max_bytes == 0 {
            return;
        }
        let mut inner = self.lock();
        if generation < inner.floor || inner.known.is_none_or(|k| k < generation) {
            return;
        }
        inner.tick += 1;
        let tick = inner.tick;
        for (bucket, rows) in buckets {
            let weight = rows.weight();
            if weight > self.max_bytes / 8 {
                continue;
            }
            let key = Key {
                shape,
                resolution,
                bucket,
            };
            if let Some(old) = inner.entries.get(&key)
                && old.generation >= generation
            {
                continue;
            }
            let slot = Slot {
                generation,
                bucket: rows,
                weight,
                used: tick,
            };
            if let Some(old) = inner.entries.insert(key, slot) {
                inner.bytes -= old.weight;
            }
            inner.bytes += weight;
        }
        if inner.bytes > self.max_bytes {
            evict(&mut inner, self.max_bytes / 4 * 3);
        }
    }

    /// Bytes held (estimated), for `/metrics`.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// Drops the least recently used entries until `target` bytes remain.
fn evict(inner: &mut Inner, target: usize) {
    let mut by_age: Vec<(u64, Key)> = inner.entries.iter().map(|(k, s)| (s.used, *k)).collect();
    by_age.sort_unstable_by_key(|(used, _)| *used);
    for (_, key) in by_age {
        if inner.bytes <= target {
            break;
        }
        if let Some(slot) = inner.entries.remove(&key) {
            inner.bytes -= slot.weight;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        sets: false,
        dimension: 0,
        value: None,
        any_type: None,
        raw: false,
    };

    fn counts(events: i64) -> Arc<Bucket> {
        Arc::new(Bucket::Counts(CountRows {
            rows: vec![CountRow {
                events,
                value_id: 0,
                type_id: 1,
            }],
            sales: vec![],
        }))
    }

    fn log(generation: i64, oldest: i64, rows: Vec<(i64, Touch)>) -> FoldLog {
        FoldLog {
            generation,
            oldest: Some(oldest),
            rows,
        }
    }

    fn hit(cache: &BucketCache, resolution: i32, bucket: i64, generation: i64) -> bool {
        cache.get(SHAPE, resolution, &[bucket], generation).0[0].is_some()
    }

    #[test]
    fn an_entry_is_used_until_a_fold_touches_its_bucket() {
        let cache = BucketCache::new(1 << 20);
        cache.apply(&log(10, 1, vec![]));
        cache.put(SHAPE, 60, vec![(120, counts(1)), (180, counts(2))], 10);
        cache.put(SHAPE, 3600, vec![(0, counts(3))], 10);
        assert!(hit(&cache, 60, 120, 10));
        // Fold 11 touches minute 180 only.
        cache.apply(&log(11, 1, vec![(11, Touch::Minute(180))]));
        assert!(hit(&cache, 60, 120, 11), "minute 120 was not touched");
        assert!(!hit(&cache, 60, 180, 11), "minute 180 was");
        assert!(!hit(&cache, 3600, 0, 11), "its hour changed too");
        // A request whose snapshot is older than the entry cannot use an
        // entry that includes a later fold of its bucket.
        cache.put(SHAPE, 60, vec![(180, counts(5))], 11);
        assert!(!hit(&cache, 60, 180, 10));
        assert!(hit(&cache, 60, 180, 11));
    }

    #[test]
    fn hour_precise_touches_invalidate_every_minute_of_the_hour_and_the_day() {
        let cache = BucketCache::new(1 << 20);
        cache.apply(&log(5, 1, vec![]));
        cache.put(
            SHAPE,
            60,
            vec![(3600 + 60, counts(1)), (7200, counts(1))],
            5,
        );
        cache.put(SHAPE, 86400, vec![(0, counts(1)), (86400, counts(1))], 5);
        cache.apply(&log(6, 1, vec![(6, Touch::Hour(3600))]));
        assert!(!hit(&cache, 60, 3600 + 60, 6));
        assert!(hit(&cache, 60, 7200, 6));
        assert!(!hit(&cache, 86400, 0, 6));
        assert!(hit(&cache, 86400, 86400, 6));
    }

    #[test]
    fn a_pruned_log_or_a_rebuild_starts_over() {
        let cache = BucketCache::new(1 << 20);
        cache.apply(&log(5, 1, vec![]));
        cache.put(SHAPE, 60, vec![(0, counts(1))], 5);
        // Generations 6..=9 were pruned before this process saw them.
        cache.apply(&log(12, 10, vec![(10, Touch::Minute(600))]));
        assert!(!hit(&cache, 60, 0, 12));
        cache.put(SHAPE, 60, vec![(0, counts(1))], 12);
        assert!(hit(&cache, 60, 0, 12));
        cache.apply(&log(13, 10, vec![(13, Touch::Everything)]));
        assert!(!hit(&cache, 60, 0, 13));
    }

    #[test]
    fn entries_are_not_inserted_before_their_log_is_applied() {
        let cache = BucketCache::new(1 << 20);
        cache.apply(&log(5, 1, vec![]));
        cache.put(SHAPE, 60, vec![(0, counts(1))], 7);
        assert!(!hit(&cache, 60, 0, 7));
        // Nor below the floor set when the process first read the log.
        cache.put(SHAPE, 60, vec![(0, counts(1))], 4);
        assert!(!hit(&cache, 60, 0, 5));
    }

    #[test]
    fn least_recently_used_entries_go_first() {
        let cache = BucketCache::new(counts(1).weight() * 10);
        cache.apply(&log(1, 1, vec![]));
        for b in 0..10 {
            cache.put(SHAPE, 60, vec![(b * 60, counts(1))], 1);
        }
        assert!(hit(&cache, 60, 0, 1));
        cache.put(SHAPE, 60, vec![(600, counts(1)), (660, counts(1))], 1);
        assert!(cache.bytes() <= counts(1).weight() * 10);
        assert!(hit(&cache, 60, 0, 1), "recently used");
        assert!(!hit(&cache, 60, 60, 1), "least recently used");
    }
}

#[cfg(test)]
mod user_set_tests {
    use super::*;

    #[test]
    fn small_sets_are_lists_and_unions_are_exact_either_way() {
        let few = UserSet::from_bitmap((1..=5u64).collect());
        let many = UserSet::from_bitmap((1..=1000u64).collect());
        assert!(matches!(few, UserSet::Few(_)));
        assert!(matches!(many, UserSet::Many(_)));
        assert_eq!((few.len(), many.len()), (5, 1000));
        let mut all = RoaringTreemap::new();
        few.union_into(&mut all);
        many.union_into(&mut all);
        UserSet::from_bitmap([2000u64].into_iter().collect()).union_into(&mut all);
        assert_eq!(all.len(), 1001);
        assert_eq!(few.to_bitmap(), (1..=5u64).collect::<RoaringTreemap>());
        assert!(few.weight() < many.weight());
    }
}
