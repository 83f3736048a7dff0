//! Per-key abuse limits: ingest events per second (the users of
//! `UpsertUsers` count as events), queries per second, concurrent
//! `IngestEvents` streams and concurrent queries (`GetMetrics`, dashboard
//! API requests), each per API key (and per instance). The concurrency cap
//! keeps one key from filling the query pool with slow calls: a refusal is
//! immediate, where waiting would hold a task and a client for nothing.
//!
//! Rates are token buckets holding at most one second's worth. A request
//! is let through whenever the bucket is not in debt and takes what it
//! costs even if that is more than is left (a message of 5,000 events under
//! a 1,000 events/s limit passes once, then the key waits 4 s), so no
//! request is too big to ever pass and the long-run rate is exact. A
//! refusal carries how long to wait: in the message, in `retry-after`
//! metadata (whole seconds, as HTTP's `Retry-After`) and `retry-after-ms`.
//!
//! Calls without a key (no key exists, loopback only) are not limited.
//! A limit of 0 turns that limit off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::config::KeyLimitSettings;

/// What a bucket meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Meter {
    Events,
    Queries,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A refused request: what was exceeded and when to retry.
#[derive(Debug, Clone)]
pub struct Exceeded {
    pub message: String,
    pub retry_after: Duration,
}

impl Exceeded {
    /// `RESOURCE_EXHAUSTED` with the retry hint in the message and metadata.
    pub fn into_status(self) -> tonic::Status {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(
            "retry-after",
            self.retry_after_seconds()
                .to_string()
                .parse()
                .expect("digits"),
        );
        metadata.insert(
            "retry-after-ms",
            self.retry_after
                .as_millis()
                .to_string()
                .parse()
                .expect("digits"),
        );
        tonic::Status::with_metadata(tonic::Code::ResourceExhausted, self.message, metadata)
    }

    /// The wait in whole seconds, rounded up (HTTP `Retry-After`).
    pub fn retry_after_seconds(&self) -> u64 {
        self.retry_after.as_millis().div_ceil(1000).max(1) as u64
    }
}

/// What a concurrency slot counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    IngestStream,
    Query,
}

/// The limits of every key, shared by the gRPC layer, the ingest handler
/// and the dashboard API.
pub struct KeyLimits {
    settings: KeyLimitSettings,
    buckets: Mutex<HashMap<(Uuid, Meter), Bucket>>,
    /// Open streams and running queries per key.
    open: Mutex<HashMap<(Uuid, Slot), u32>>,
}

impl KeyLimits {
    pub fn new(settings: KeyLimitSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            buckets: Mutex::default(),
            open: Mutex::default(),
        })
    }

    /// Takes `events` ingest events (or `UpsertUsers` users) from `key`'s budget.
    pub fn take_events(&self, key: Uuid, events: u64) -> Result<(), Exceeded> {
        self.take(key, Meter::Events, self.settings.events_per_second, events)
    }

    /// Takes one query from `key`'s budget.
    pub fn take_query(&self, key: Uuid) -> Result<(), Exceeded> {
        self.take(key, Meter::Queries, self.settings.queries_per_second, 1)
    }

    fn take(&self, key: Uuid, meter: Meter, rate: u32, cost: u64) -> Result<(), Exceeded> {
        if rate == 0 {
            return Ok(());
        }
        let rate = f64::from(rate);
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry((key, meter)).or_insert(Bucket {
            tokens: rate,
            updated: now,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(rate);
        bucket.updated = now;
        if bucket.tokens < 0.0 {
            let retry_after = Duration::from_secs_f64(-bucket.tokens / rate);
            let (what, flag) = match meter {
                Meter::Events => ("events", "PULSE_KEY_EVENTS_PER_SECOND"),
                Meter::Queries => ("queries", "PULSE_KEY_QUERIES_PER_SECOND"),
            };
            return Err(Exceeded {
                message: format!(
                    "API key {key} is over its limit of {rate} {what}/s ({flag}); retry after {} ms",
                    retry_after.as_millis().max(1)
                ),
                retry_after,
            });
        }
        bucket.tokens -= cost as f64;
        Ok(())
    }

    /// Counts one more open `IngestEvents` stream of `key` until the guard
    /// is dropped.
    pub fn open_stream(self: &Arc<Self>, key: Uuid) -> Result<SlotGuard, Exceeded> {
        let max = self.settings.max_ingest_streams;
        self.open_slot(key, Slot::IngestStream, max).ok_or_else(|| Exceeded {
            message: format!(
                "API key {key} already has {max} IngestEvents streams open (PULSE_KEY_MAX_INGEST_STREAMS); retry after one ends"
            ),
            retry_after: Duration::from_secs(1),
        })
    }

    /// Counts one more running query of `key` until the guard is dropped.
    pub fn start_query(self: &Arc<Self>, key: Uuid) -> Result<SlotGuard, Exceeded> {
        let max = self.settings.max_concurrent_queries;
        self.open_slot(key, Slot::Query, max).ok_or_else(|| Exceeded {
            message: format!(
                "API key {key} already has {max} queries running (PULSE_KEY_MAX_CONCURRENT_QUERIES); retry after one ends"
            ),
            retry_after: Duration::from_millis(250),
        })
    }

    fn open_slot(self: &Arc<Self>, key: Uuid, slot: Slot, max: u32) -> Option<SlotGuard> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry((key, slot)).or_insert(0);
        if max > 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(SlotGuard {
            limits: self.clone(),
            key,
            slot,
        })
    }
}

/// One open stream or running query; released on drop however the call ends.
pub struct SlotGuard {
    limits: Arc<KeyLimits>,
    key: Uuid,
    slot: Slot,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = (self.key, self.slot);
        if let Some(count) = open.get_mut(&entry) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(events: u32, queries: u32, streams: u32) -> Arc<KeyLimits> {
        KeyLimits::new(KeyLimitSettings {
            events_per_second: events,
            queries_per_second: queries,
            max_ingest_streams: streams,
            max_concurrent_queries: streams,
        })
    }

    #[test]
    fn a_big_request_passes_once_then_the_key_waits() {
        let l = limits(100, 0, 0);
        let key = Uuid::now_v7();
        assert!(l.take_events(key, 250).is_ok());
        let refused = l.take_events(key, 1).unwrap_err();
        assert!(
            refused.retry_after > Duration::from_millis(1000),
            "{refused:?}"
        );
        assert!(refused.message.contains("retry after"));
        assert_eq!(
            refused.clone().into_status().code(),
            tonic::Code::ResourceExhausted
        );
        // Another key has its own budget; a zero limit is no limit.
        assert!(l.take_events(Uuid::now_v7(), 1).is_ok());
        for _ in 0..1000 {
            assert!(l.take_query(key).is_ok());
        }
    }

    #[test]
    fn streams_are_counted_until_dropped() {
        let l = limits(0, 0, 2);
        let key = Uuid::now_v7();
        let a = l.open_stream(key).unwrap();
        let _b = l.open_stream(key).unwrap();
        assert!(l.open_stream(key).is_err());
        assert!(l.open_stream(Uuid::now_v7()).is_ok());
        drop(a);
        assert!(l.open_stream(key).is_ok());
    }

    #[test]
    fn running_queries_are_counted_apart_from_streams() {
        let l = limits(0, 0, 2);
        let key = Uuid::now_v7();
        let _streams = (l.open_stream(key).unwrap(), l.open_stream(key).unwrap());
        let a = l.start_query(key).unwrap();
        let _b = l.start_query(key).unwrap();
        let Err(refused) = l.start_query(key) else {
            panic!("a third query of a key capped at 2 passed");
        };
        assert!(refused.message.contains("PULSE_KEY_MAX_CONCURRENT_QUERIES"));
        assert_eq!(refused.into_status().code(), tonic::Code::ResourceExhausted);
        drop(a);
        assert!(l.start_query(key).is_ok());
        assert!(limits(0, 0, 0).start_query(key).is_ok(), "0 is no limit");
    }
}
