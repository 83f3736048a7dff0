//! Per-key quotas (abuse limits; the size limits of a message are
//! `config::IngestLimits`, the connection caps `listen.rs`): ingest events per second (the users of
//! `UpsertUsers` count as events), queries per second, concurrent
//! `IngestEvents` streams and concurrent queries (`GetMetrics`, dashboard
//! API requests), each per API key (and per instance). The query cap keeps
//! one key from filling the query pool with slow calls; a query over it
//! waits for a slot at most the query budget (a dashboard's burst of a
//! dozen cached reads queues for milliseconds), then is refused. A stream
//! over its cap is refused at once: streams are long.
//!
//! Rates are token buckets holding at most one second's worth. A request
//! is let through whenever the bucket is not in debt and takes what it
//! costs even if that is more than is left (a message of 5,000 events under
//! a 1,000 events/s limit passes once, then the key waits 4 s), so no
//! request is too big to ever pass and the long-run rate is exact. A
//! refusal ([`Exceeded`], which becomes [`Error::Throttled`](crate::error::Error::Throttled))
//! carries how long to wait: in the message, in `retry-after` metadata
//! (whole seconds, as HTTP's `Retry-After`) and `retry-after-ms`, or the
//! `Retry-After` header over HTTP.
//!
//! Calls without a key (no key exists, loopback only) are not limited.
//! A limit of 0 turns that limit off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::config::QuotaSettings;

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
    /// The wait in whole seconds, rounded up (HTTP `Retry-After`).
    pub fn retry_after_seconds(&self) -> u64 {
        self.retry_after.as_millis().div_ceil(1000).max(1) as u64
    }
}

/// The limits of every key, shared by the gRPC layer, the ingest handler
/// and the dashboard API.
pub struct Quotas {
    settings: QuotaSettings,
    buckets: Mutex<HashMap<(Uuid, Meter), Bucket>>,
    /// Open IngestEvents streams per key.
    streams: Mutex<HashMap<Uuid, u32>>,
    /// Running queries per key: a semaphore of `max_concurrent_queries`
    /// permits, dropped from the map when nobody holds or awaits it.
    queries: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
    /// Longest wait for a query slot (the query budget).
    query_wait: Duration,
}

impl Quotas {
    /// The limits of `settings`; a query waits at most `query_wait` for a
    /// slot among its key's concurrent queries.
    pub fn new(settings: QuotaSettings, query_wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            settings,
            buckets: Mutex::default(),
            streams: Mutex::default(),
            queries: Mutex::default(),
            query_wait,
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
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
    pub fn open_stream(self: &Arc<Self>, key: Uuid) -> Result<StreamGuard, Exceeded> {
        let max = self.settings.max_ingest_streams;
        let mut streams = self
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = streams.entry(key).or_insert(0);
        if max > 0 && *open >= max {
            return Err(Exceeded {
                message: format!(
                    "API key {key} already has {max} IngestEvents streams open (PULSE_KEY_MAX_INGEST_STREAMS); retry after one ends"
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        *open += 1;
        Ok(StreamGuard {
            limits: self.clone(),
            key,
        })
    }

    /// A slot among `key`'s concurrent queries, held until the returned
    /// value is dropped; waits for one at most the query budget.
    pub async fn start_query(self: &Arc<Self>, key: Uuid) -> Result<QuerySlot, Exceeded> {
        let max = self.settings.max_concurrent_queries;
        if max == 0 {
            return Ok(QuerySlot { held: None });
        }
        let semaphore = self
            .queries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(max as usize)))
            .clone();
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => tokio::time::timeout(self.query_wait, semaphore.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        if let Some(permit) = permit {
            Ok(QuerySlot {
                held: Some((self.clone(), key, permit)),
            })
        } else {
            self.forget_idle_semaphore(key);
            Err(Exceeded {
                message: format!(
                    "API key {key} already has {max} queries running and none ended within {} ms (PULSE_KEY_MAX_CONCURRENT_QUERIES); retry later",
                    self.query_wait.as_millis()
                ),
                retry_after: self.query_wait.max(Duration::from_millis(100)),
            })
        }
    }

    /// Drops `key`'s semaphore once no query holds or awaits it (the map
    /// holds the only reference), so the map does not grow with old keys.
    fn forget_idle_semaphore(&self, key: Uuid) {
        let mut queries = self
            .queries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if queries
            .get(&key)
            .is_some_and(|semaphore| Arc::strong_count(semaphore) == 1)
        {
            queries.remove(&key);
        }
    }
}

/// One open stream; closes it on drop however the call ends.
pub struct StreamGuard {
    limits: Arc<Quotas>,
    key: Uuid,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut streams = self
            .limits
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = streams.get_mut(&self.key) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.key);
            }
        }
    }
}

/// A running query's slot (none when the key's cap is off); released on
/// drop however the call ends.
pub struct QuerySlot {
    held: Option<(Arc<Quotas>, Uuid, OwnedSemaphorePermit)>,
}

impl Drop for QuerySlot {
    fn drop(&mut self) {
        if let Some((limits, key, permit)) = self.held.take() {
            drop(permit);
            limits.forget_idle_semaphore(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(events: u32, queries: u32, streams: u32) -> Arc<Quotas> {
        Quotas::new(
            QuotaSettings {
                events_per_second: events,
                queries_per_second: queries,
                max_ingest_streams: streams,
                max_concurrent_queries: streams,
            },
            Duration::from_millis(50),
        )
    }

    #[test]
    fn a_big_request_passes_once_then_the_key_waits() {
        let l = limits(100, 0, 0);
        let key = Uuid::now_v7();
        assert!(l.take_events(key, 250).is_ok());
        let refused = l.take_events(key, 1).unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(1), "{refused:?}");
        assert!(refused.message.contains("retry after"));
        let status = tonic::Status::from(crate::error::Error::from(refused.clone()));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.metadata().get("retry-after").is_some());
        assert!(status.metadata().get("retry-after-ms").is_some());
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

    #[tokio::test]
    async fn running_queries_wait_briefly_for_a_slot_then_are_refused() {
        let l = limits(0, 0, 2);
        let key = Uuid::now_v7();
        let _streams = (l.open_stream(key).unwrap(), l.open_stream(key).unwrap());
        let a = l.start_query(key).await.unwrap();
        let _b = l.start_query(key).await.unwrap();
        let Err(refused) = l.start_query(key).await else {
            panic!("a third query of a key capped at 2 passed");
        };
        assert!(refused.message.contains("PULSE_KEY_MAX_CONCURRENT_QUERIES"));
        assert_eq!(
            tonic::Status::from(crate::error::Error::from(refused)).code(),
            tonic::Code::ResourceExhausted
        );
        // A slot that frees up within the wait is taken.
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.start_query(key).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(a);
        assert!(waiting.await.unwrap());
        assert!(l.start_query(Uuid::now_v7()).await.is_ok(), "per key");
        assert!(
            limits(0, 0, 0).start_query(key).await.is_ok(),
            "0 is no limit"
        );
    }

    #[tokio::test]
    async fn idle_keys_leave_no_semaphore_behind() {
        let l = limits(0, 0, 2);
        for _ in 0..10 {
            let _slot = l.start_query(Uuid::now_v7()).await.unwrap();
        }
        assert!(l.queries.lock().unwrap().is_empty());
    }
}
