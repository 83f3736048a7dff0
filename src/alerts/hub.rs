//! Delivery of stored notifications to this instance's `WatchAlerts`
//! subscribers.
//!
//! One listener task per instance LISTENs on `pulse_alerts` on a connection
//! of its own. A NOTIFY (or a periodic poll, or a reconnect) makes it read
//! the rows after the last id it forwarded, in id order, and publish them on
//! a bounded broadcast channel: the live feed. Because ids commit in id
//! order (`db/alerts.rs`), "the rows after the last id" never skips one.
//!
//! Each subscriber is a task of its own that
//! 1. subscribes to the live feed **before** reading the table, then
//! 2. replays the stored rows after its `after_id`, page by page, then
//! 3. forwards live items, dropping any id it has already sent.
//!
//! Anything committed before step 2's read is replayed; anything committed
//! after it reaches the feed after the subscription: no gap, and the id
//! check removes the overlap. A subscriber that falls behind the feed
//! (the broadcast reports lag) is caught up from the table the same way, so
//! it is never dropped or skipped, and the feed never waits for it: a slow
//! client slows only its own task. A subscriber stops when its client goes
//! (the channel to tonic closes) or at shutdown, ending the stream cleanly.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures::{FutureExt, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::{self, PgPool, connection};
use crate::domain::alert::Notification;
use crate::error::{Error, Result};
use crate::telemetry::Telemetry;

/// Notifications read from the table per query.
const PAGE: i64 = 500;
/// Items queued towards one client before its task waits for it.
const SUBSCRIBER_BUFFER: usize = 32;
/// How often the listener reads the table even without a NOTIFY: a safety
/// net that also proves the LISTEN connection is alive.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for one read on the LISTEN connection before reconnecting.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a subscriber receives: a notification, or the error that ends the
/// stream.
pub type WatchItem = Result<Arc<Notification>>;

/// The live feed of one instance, and what its subscribers share.
#[derive(Clone)]
pub struct Hub {
    /// Notifications in id order, as the listener reads them.
    live: broadcast::Sender<Arc<Notification>>,
    /// For replays and catch-ups (never held while sending to a client).
    pool: PgPool,
    telemetry: Arc<Telemetry>,
    /// Ends the listener and every subscriber stream.
    shutdown: CancellationToken,
}

impl Hub {
    /// A hub whose live feed holds `capacity` notifications before a
    /// subscriber that has not taken them is caught up from the table.
    pub fn new(
        pool: PgPool,
        telemetry: Arc<Telemetry>,
        capacity: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let (live, _) = broadcast::channel(capacity.max(1));
        Self {
            live,
            pool,
            telemetry,
            shutdown,
        }
    }

    /// The listener task: forwards every notification stored after
    /// `last_id` to the live feed until shutdown, reconnecting as needed.
    ///
    /// `last_id` must be read before the first subscriber can subscribe
    /// (App::run reads it before serving): a row the feed never publishes
    /// must be one every subscriber's replay can see.
    pub async fn listen(self, database_url: String, mut last_id: i64) {
        let mut backoff = Duration::from_millis(100);
        while !self.shutdown.is_cancelled() {
            let mut conn = match listen_connection(&database_url).await {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, retry_ms = backoff.as_millis() as u64, "alert feed cannot LISTEN; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            // LISTEN is in place, so rows committed from now on will be
            // announced; rows committed while nobody listened are read now.
            let mut healthy = self.forward(&mut conn, &mut last_id).await;
            while healthy {
                let woke = {
                    let mut notifications = pin!(conn.notifications_stream());
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(POLL_INTERVAL) => true,
                        item = notifications.next() => {
                            // One read serves every NOTIFY already queued.
                            while let Some(Some(Ok(_))) = notifications.next().now_or_never() {}
                            matches!(item, Some(Ok(_)))
                        }
                    }
                };
                healthy = woke && self.forward(&mut conn, &mut last_id).await;
            }
            tracing::warn!("alert feed lost its LISTEN connection; reconnecting and catching up");
            // Never a hot loop, even if every read fails on a fresh connection.
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Publishes every stored row after `last_id`; false when the
    /// connection failed (the caller reconnects).
    async fn forward(&self, conn: &mut AsyncPgConnection, last_id: &mut i64) -> bool {
        loop {
            let read = tokio::time::timeout(
                READ_TIMEOUT,
                db::alerts::notifications_after(conn, *last_id, &[], PAGE),
            )
            .await;
            let page = match read {
                Ok(Ok(page)) => page,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "alert feed read failed");
                    return false;
                }
                Err(_) => {
                    tracing::warn!("alert feed read timed out");
                    return false;
                }
            };
            let full = page.len() as i64 == PAGE;
            for notification in page {
                *last_id = notification.id;
                // An error only means nobody is subscribed right now.
                let _ = self.live.send(Arc::new(notification));
            }
            if !full {
                return true;
            }
        }
    }

    /// Starts a subscriber: notifications after `after_id` (of `rule_ids`
    /// only, unless empty), replayed then live, on the returned channel.
    /// Dropping the receiver stops the subscriber at once.
    pub fn watch(&self, after_id: i64, rule_ids: Vec<Uuid>) -> mpsc::Receiver<WatchItem> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        // Subscribe before the replay reads the table: see the module doc.
        let live = self.live.subscribe();
        let subscriber = Subscriber {
            hub: self.clone(),
            tx,
            rule_ids,
            last_id: after_id,
            _connected: Connected::new(&self.telemetry),
        };
        tokio::spawn(subscriber.run(live));
        rx
    }
}

async fn listen_connection(url: &str) -> Result<AsyncPgConnection> {
    let mut conn = tokio::time::timeout(READ_TIMEOUT, AsyncPgConnection::establish(url))
        .await
        .map_err(|_| Error::Unavailable("connecting to PostgreSQL timed out".into()))?
        .map_err(|e| Error::unavailable("cannot connect to PostgreSQL", e))?;
    conn.batch_execute("SET application_name = 'pulse-alert-feed'")
        .await?;
    db::alerts::listen(&mut conn).await?;
    Ok(conn)
}

/// Counts a connected subscriber for as long as it lives.
struct Connected(Arc<Telemetry>);

impl Connected {
    fn new(telemetry: &Arc<Telemetry>) -> Self {
        telemetry.alert_subscribers.inc();
        Self(telemetry.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.alert_subscribers.dec();
    }
}

/// Why a subscriber stopped sending.
enum Stop {
    /// The client went away or the server is shutting down.
    Gone,
    /// The table could not be read; the client is told, then the stream ends.
    Failed(Error),
}

struct Subscriber {
    hub: Hub,
    tx: mpsc::Sender<WatchItem>,
    rule_ids: Vec<Uuid>,
    /// The highest id this subscriber has sent or passed over.
    last_id: i64,
    _connected: Connected,
}

impl Subscriber {
    async fn run(mut self, mut live: broadcast::Receiver<Arc<Notification>>) {
        if let Err(stop) = self.catch_up().await {
            return self.end(stop).await;
        }
        loop {
            let item = tokio::select! {
                () = self.hub.shutdown.cancelled() => return,
                () = self.tx.closed() => return,
                item = live.recv() => item,
            };
            let result = match item {
                Ok(notification) => self.offer(notification).await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self.hub.telemetry.alert_subscriber_catchups.inc();
                    self.hub
                        .telemetry
                        .alert_subscriber_lag
                        .observe(missed as f64);
                    self.catch_up().await
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if let Err(stop) = result {
                return self.end(stop).await;
            }
        }
    }

    /// Sends a live notification unless it was sent already or is filtered out.
    async fn offer(&mut self, notification: Arc<Notification>) -> Result<(), Stop> {
        if notification.id <= self.last_id {
            return Ok(());
        }
        self.last_id = notification.id;
        if self.rule_ids.is_empty() || self.rule_ids.contains(&notification.rule_id) {
            self.send(notification).await?;
        }
        Ok(())
    }

    /// Sends every stored notification after `last_id`, page by page. The
    /// pool connection is released before sending, so a slow client never
    /// holds one.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            let page = async {
                let mut conn = connection(&self.hub.pool).await?;
                db::alerts::notifications_after(&mut conn, self.last_id, &self.rule_ids, PAGE).await
            }
            .await
            .map_err(Stop::Failed)?;
            let full = page.len() as i64 == PAGE;
            for notification in page {
                let id = notification.id;
                self.send(Arc::new(notification)).await?;
                self.last_id = id;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn send(&self, notification: Arc<Notification>) -> Result<(), Stop> {
        tokio::select! {
            sent = self.tx.send(Ok(notification)) => {
                sent.map_err(|_| Stop::Gone)?;
                self.hub.telemetry.alert_notifications_delivered.inc();
                Ok(())
            }
            () = self.hub.shutdown.cancelled() => Err(Stop::Gone),
        }
    }

    async fn end(self, stop: Stop) {
        if let Stop::Failed(error) = stop {
            // The client may be gone too; then there is nobody to tell.
            tokio::select! {
                _ = self.tx.send(Err(error)) => {}
                () = self.hub.shutdown.cancelled() => {}
            }
        }
    }
}
