//! The evaluator's clock. Production reads the system clock; tests inject a
//! [`ManualClock`] and move time themselves.
//!
//! Contract: the evaluator reads its clock exactly once per tick, at the
//! start, and nothing else reads it. [`ManualClock::settle`] relies on this
//! to know that a whole tick has run at the time it was set to.

use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock shared by settings and the evaluator; the system clock by default.
#[derive(Clone)]
pub struct SharedClock(pub Arc<dyn Clock>);

impl SharedClock {
    pub fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }
}

impl Default for SharedClock {
    fn default() -> Self {
        Self(Arc::new(SystemClock))
    }
}

impl fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedClock")
    }
}

impl<C: Clock> From<Arc<C>> for SharedClock {
    fn from(clock: Arc<C>) -> Self {
        Self(clock)
    }
}

/// A clock that only moves when told to, for tests.
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    /// How many times the clock was read: one per evaluator tick.
    reads: watch::Sender<u64>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self {
            now: Mutex::new(start),
            reads: watch::Sender::new(0),
        })
    }

    /// The time the clock shows, without counting as a read.
    pub fn peek(&self) -> DateTime<Utc> {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set(&self, time: DateTime<Utc>) {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = time;
    }

    pub fn advance(&self, by: TimeDelta) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += by;
    }

    /// Returns once a whole evaluator tick has run at the time currently
    /// set: after two more reads, since the second one starts the tick
    /// after a tick that read the current time. Waits forever if nothing
    /// evaluates, so callers bound it with a timeout.
    pub async fn settle(&self) {
        let mut reads = self.reads.subscribe();
        let start = *reads.borrow_and_update();
        let _ = reads.wait_for(|n| *n >= start + 2).await;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let now = self.peek();
        self.reads.send_modify(|n| *n += 1);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settle_waits_for_two_reads_of_the_new_time() {
        let clock = ManualClock::new(DateTime::UNIX_EPOCH);
        clock.advance(TimeDelta::seconds(5));
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.settle().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(clock.now().timestamp(), 5);
        assert_eq!(clock.now().timestamp(), 5);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("settled after two reads")
            .expect("no panic");
    }
}
