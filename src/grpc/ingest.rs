//! `pulse.v1.IngestService`: the front door.
//!
//! `IngestEvents` runs two tasks per stream: this handler decodes and
//! validates messages as they arrive, and a writer task commits batches in
//! arrival order. A bounded channel between them lets decoding overlap with
//! writing while keeping memory bounded; small messages queued behind a
//! write are coalesced into one batch. The response is sent only after the
//! writer has committed every accepted event.
//!
//! A stream whose API key is revoked ends with `UNAUTHENTICATED` as soon as
//! the key set's reload shows it: the handler stops reading and the writer
//! writes no further batch (one already being written may commit; nothing
//! was acknowledged, so a resend with a valid key is safe).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::proto::ingest_service_server::IngestService;
use super::proto::{
    Event, EventError, IngestEventsRequest, IngestEventsResponse, UpsertUsersRequest,
    UpsertUsersResponse,
};
use crate::auth::{Caller, KeySet, revoked_status};
use crate::config::IngestLimits;
use crate::db::ingest::{IdCache, register_types, upsert_users, write_events};
use crate::db::replica::WriteLsn;
use crate::db::{PgPool, connection};
use crate::domain::event::{Clock, EventLimits, RawEvent, Rejection, ValidEvent, validate};
use crate::domain::user::validate_user;
use crate::error::Error;
use crate::quota::Quotas;
use crate::telemetry::Telemetry;

/// Most events the writer coalesces into one statement.
const MAX_BATCH_EVENTS: usize = 5_000;
/// Most bytes (`ValidEvent::size`) the writer coalesces into one statement:
/// 5,000 events of 8 KB would be 40 MB held, and bound again as SQL
/// parameters, per stream. One message is never split.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Most users in one UpsertUsers request.
pub const MAX_USERS_PER_REQUEST: usize = 10_000;

/// What every ingest call shares.
pub struct IngestState {
    pub pool: PgPool,
    pub cache: IdCache,
    pub telemetry: Arc<Telemetry>,
    pub limits: IngestLimits,
    /// Set when reads may go to a replica: after each commit the writer
    /// records the primary's WAL position here (read-your-writes).
    pub write_lsn: Option<Arc<WriteLsn>>,
    /// The retention period (`--retention-days`), if any: older events are
    /// rejected, since their raw rows (and so their dedup) may be gone.
    pub retention: Option<chrono::TimeDelta>,
    /// Per-key events/s and concurrent stream limits.
    pub quotas: Arc<Quotas>,
    /// The API keys, watched so that a revoked key's streams end.
    pub keys: Arc<KeySet>,
    /// `--ingest-memory-bytes`, in KiB permits: each batch holds its
    /// events' size from validation until it is committed.
    pub memory: IngestMemory,
}

/// The bytes of validated events every stream together may hold before
/// they are written (`--ingest-memory-bytes`). A batch takes its size
/// ([`ValidEvent::size`]) before it is queued for the writer and gives it
/// back once committed; a batch larger than the whole budget takes all of
/// it, so it waits for the others but always passes.
#[derive(Clone)]
pub struct IngestMemory {
    permits: Arc<Semaphore>,
    /// Permits (KiB) in all.
    total: u32,
}

impl IngestMemory {
    pub fn new(bytes: usize) -> Self {
        let total = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `events` fit in the budget and returns their share.
    async fn reserve(&self, events: &[ValidEvent]) -> OwnedSemaphorePermit {
        let bytes: usize = events.iter().map(|e| e.size).sum();
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        self.permits
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the ingest budget is never closed")
    }
}

/// Receives events and users.
#[derive(Clone)]
pub struct IngestApi {
    state: Arc<IngestState>,
}

impl IngestApi {
    pub fn new(state: Arc<IngestState>) -> Self {
        Self { state }
    }
}

/// Counts of one stream, as the response reports them.
#[derive(Debug, Default)]
struct Totals {
    accepted: u64,
    duplicates: u64,
}

/// Decrements the in-flight gauge however the stream ends.
struct InFlight(Arc<Telemetry>);

impl InFlight {
    fn new(telemetry: Arc<Telemetry>) -> Self {
        telemetry.ingest_streams_in_flight.inc();
        Self(telemetry)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.ingest_streams_in_flight.dec();
    }
}

/// A batch and its share of the ingest memory budget, given back once it
/// is committed (or dropped).
type Batch = (Vec<ValidEvent>, OwnedSemaphorePermit);

/// Commits batches in order until the channel closes, a write fails or
/// the stream is `cut` (its key was revoked).
async fn write_loop(
    state: Arc<IngestState>,
    mut batches: mpsc::Receiver<Batch>,
    cut: CancellationToken,
) -> Result<Totals, Error> {
    let mut totals = Totals::default();
    while let Some((mut batch, mut permit)) = batches.recv().await {
        if cut.is_cancelled() {
            return Err(Error::Unauthenticated("the stream was cut".into()));
        }
        let mut bytes: usize = batch.iter().map(|e| e.size).sum();
        while batch.len() < MAX_BATCH_EVENTS && bytes < MAX_BATCH_BYTES {
            match batches.try_recv() {
                Ok((more, more_permit)) => {
                    bytes += more.iter().map(|e| e.size).sum::<usize>();
                    batch.extend(more);
                    permit.merge(more_permit);
                }
                Err(_) => break,
            }
        }
        // Repeats inside one batch are duplicates of their first occurrence.
        let mut seen = HashSet::with_capacity(batch.len());
        let before = batch.len();
        batch.retain(|e| seen.insert(e.event_id));
        let repeated = (before - batch.len()) as u64;

        let started = Instant::now();
        let mut conn = connection(&state.pool).await?;
        let outcome = write_events(&mut conn, &state.cache, &mut batch).await?;
        if let Some(write_lsn) = &state.write_lsn {
            write_lsn.record(&mut conn).await?;
        }
        drop(conn);
        state
            .telemetry
            .ingest_batch_duration
            .observe(started.elapsed().as_secs_f64());

        let accepted = outcome.inserted.len() as u64;
        let duplicates = batch.len() as u64 - accepted + repeated;
        drop(batch);
        drop(permit);
        state.telemetry.count_ingest("accepted", accepted);
        state.telemetry.count_ingest("duplicate", duplicates);
        totals.accepted += accepted;
        totals.duplicates += duplicates;
    }
    Ok(totals)
}

/// Refuses an event older than the retention period. Retention deletes raw
/// events older than that, and with them the record that an `event_id` was
/// seen: a resent old event would be counted twice by the rollups. Deletion
/// only ever removes events older than `now - retention` at its run, so
/// refusing those at ingest (a later `now`) covers every deleted id.
fn within_retention(
    event: ValidEvent,
    clock: &Clock,
    retention: Option<chrono::TimeDelta>,
) -> Result<ValidEvent, Rejection> {
    match retention {
        Some(keep) if event.timestamp < clock.received_at - keep => Err(Rejection::new(
            "expired",
            format!(
                "timestamp {} is older than the retention period ({} days, PULSE_RETENTION_DAYS): raw events that old are deleted",
                event.timestamp.to_rfc3339(),
                keep.num_days()
            ),
        )),
        _ => Ok(event),
    }
}

/// Registers event types this process has not seen (see
/// [`register_types`]); returns those refused because the registry is full.
async fn register_new_types(
    state: &IngestState,
    names: &[&str],
) -> Result<std::collections::HashSet<String>, Error> {
    let mut conn = connection(&state.pool).await?;
    register_types(&mut conn, &state.cache, names, state.limits.max_event_types).await
}

/// Why an event of a type the full registry refused is rejected.
fn type_limit_rejection(event_type: &str, max_event_types: usize) -> Rejection {
    Rejection::new(
        "event_type_limit",
        format!(
            "event_type `{event_type}` is new and the registry already holds its limit of \
             {max_event_types} distinct types (PULSE_MAX_EVENT_TYPES); send a known type or \
             raise the limit"
        ),
    )
}

/// `text` cut to at most `max` bytes on a character boundary.
fn stream_error(status: Status, max_message_bytes: usize) -> Status {
    // tonic reports an oversized message as OUT_OF_RANGE (and only that:
    // see `decode_errors.rs`); the contract says RESOURCE_EXHAUSTED, with
    // the limit and what to do. Invalid protobuf already arrives as
    // INVALID_ARGUMENT from `ContractCodec`.
    if status.code() == tonic::Code::OutOfRange {
        return Status::resource_exhausted(format!(
            "{}; split the events over more messages (limit: PULSE_MAX_MESSAGE_BYTES = {max_message_bytes})",
            crate::text::truncate(status.message(), 200)
        ));
    }
    status
}

/// Resolves when the caller's key is revoked; never without a key.
fn revocation(keys: &KeySet, key_id: Option<uuid::Uuid>) -> impl Future<Output = ()> + use<> {
    let revocation = key_id.map(|id| keys.revoked(id));
    async move {
        match revocation {
            Some(revoked) => revoked.await,
            None => std::future::pending().await,
        }
    }
}

/// What a stream reports back: every event's index, the rejections (the
/// first `max_errors_reported` of them in detail).
#[derive(Default)]
struct Report {
    /// Events seen so far; the next event's index.
    index: u64,
    rejected: u64,
    errors: Vec<EventError>,
}

impl Report {
    /// The answer of a stream whose every batch was written.
    fn finish(self, totals: Totals) -> IngestEventsResponse {
        tracing::info!(
            events = self.index,
            accepted = totals.accepted,
            duplicates = totals.duplicates,
            rejected = self.rejected,
            "ingest stream done"
        );
        IngestEventsResponse {
            accepted: totals.accepted,
            duplicates: totals.duplicates,
            rejected: self.rejected,
            errors: self.errors,
        }
    }
}

/// One message's events, checked: the valid ones with their stream
/// indexes, and the rejected ones.
struct Checked {
    valid: Vec<ValidEvent>,
    positions: Vec<u64>,
    rejections: Vec<(u64, String, Rejection)>,
}

impl IngestApi {
    /// The checks of a whole message (size, the key's events/s, `sent_at`)
    /// and the clock its events are judged by; a failure ends the stream.
    fn admit(
        &self,
        caller: Option<Caller>,
        message: &IngestEventsRequest,
    ) -> Result<Clock, Status> {
        let limits = &self.state.limits;
        if message.events.len() > limits.max_events_per_message {
            return Err(Status::invalid_argument(format!(
                "a message holds {} events; the limit is {} (PULSE_MAX_EVENTS_PER_MESSAGE): send more, smaller messages",
                message.events.len(),
                limits.max_events_per_message
            )));
        }
        if let Some(caller) = caller {
            self.state
                .quotas
                .take_events(caller.key_id, message.events.len() as u64)
                .map_err(Error::from)?;
        }
        let sent_at = match &message.sent_at {
            None => None,
            Some(ts) => Some(
                convert::timestamp(ts)
                    .ok_or_else(|| Status::invalid_argument("sent_at is out of range"))?,
            ),
        };
        Ok(Clock {
            received_at: chrono::Utc::now(),
            sent_at,
        })
    }

    /// Validates each event of a message, numbering them from `index`.
    fn check(&self, events: Vec<Event>, clock: &Clock, index: &mut u64) -> Checked {
        let limits = &self.state.limits;
        let event_limits = EventLimits {
            max_data_bytes: limits.max_data_bytes,
            max_string_bytes: limits.max_string_bytes,
        };
        let mut checked = Checked {
            valid: Vec::with_capacity(events.len()),
            positions: Vec::with_capacity(events.len()),
            rejections: Vec::new(),
        };
        for event in events {
            let event_id = event.event_id.clone();
            let result = RawEvent::try_from(event)
                .and_then(|raw| validate(raw, clock, &event_limits))
                .and_then(|valid| within_retention(valid, clock, self.state.retention));
            match result {
                Ok(event) => {
                    checked.valid.push(event);
                    checked.positions.push(*index);
                }
                Err(rejection) => checked.rejections.push((*index, event_id, rejection)),
            }
            *index += 1;
        }
        checked
    }

    /// Registers the types this process has not seen before the batch is
    /// formed; past `--max-event-types` their events alone are rejected.
    async fn resolve_types(&self, mut checked: Checked) -> Result<Checked, Error> {
        let state = &self.state;
        let new_types: Vec<&str> = checked
            .valid
            .iter()
            .map(|e| e.event_type.as_str())
            .filter(|t| state.cache.type_id(t).is_none())
            .collect();
        if new_types.is_empty() {
            return Ok(checked);
        }
        let refused = register_new_types(state, &new_types).await?;
        if refused.is_empty() {
            return Ok(checked);
        }
        let mut kept = Vec::with_capacity(checked.valid.len());
        for (event, position) in checked.valid.into_iter().zip(checked.positions.drain(..)) {
            if refused.contains(&event.event_type) {
                checked.rejections.push((
                    position,
                    event.event_id.to_string(),
                    type_limit_rejection(&event.event_type, state.limits.max_event_types),
                ));
            } else {
                kept.push(event);
            }
        }
        checked.valid = kept;
        checked.rejections.sort_by_key(|(position, ..)| *position);
        Ok(checked)
    }

    /// Counts a message's rejections and keeps the first ones in detail.
    fn report(&self, report: &mut Report, rejections: Vec<(u64, String, Rejection)>) {
        for (position, event_id, rejection) in rejections {
            report.rejected += 1;
            self.state
                .telemetry
                .count_ingest(&format!("rejected_{}", rejection.class), 1);
            if report.errors.len() < self.state.limits.max_errors_reported {
                report.errors.push(EventError {
                    index: position,
                    event_id: crate::text::truncate(&event_id, 64).to_owned(),
                    reason: rejection.reason,
                });
            }
        }
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    /// Reads messages, checks them and hands valid events to the writer
    /// task (`write_loop`) through a channel of two batches, so reading
    /// the next message overlaps writing the last. A revoked key ends the
    /// stream at once; a failed message ends it after what was sent before.
    async fn ingest_events(
        &self,
        request: Request<Streaming<IngestEventsRequest>>,
    ) -> Result<Response<IngestEventsResponse>, Status> {
        let state = self.state.clone();
        // Set by the auth layer when the call came with a key.
        let caller = request.extensions().get::<Caller>().copied();
        let _stream_slot = caller
            .map(|c| state.quotas.open_stream(c.key_id))
            .transpose()
            .map_err(Error::from)?;
        let _in_flight = InFlight::new(state.telemetry.clone());
        let mut stream = request.into_inner();
        let (batches, receiver) = mpsc::channel::<Batch>(2);
        let cut = CancellationToken::new();
        let writer = tokio::spawn(write_loop(state.clone(), receiver, cut.clone()));
        let key_id = caller.map(|c| c.key_id);
        let mut revoked = std::pin::pin!(revocation(&state.keys, key_id));
        let revoked_failure =
            || key_id.map_or_else(|| Status::unauthenticated("revoked"), revoked_status);

        let mut report = Report::default();
        let mut failure: Option<Status> = None;
        loop {
            let next = tokio::select! {
                biased;
                () = &mut revoked => {
                    cut.cancel();
                    failure = Some(revoked_failure());
                    break;
                }
                next = stream.message() => next,
            };
            let message = match next {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    failure = Some(stream_error(status, state.limits.max_message_bytes));
                    break;
                }
            };
            let clock = match self.admit(caller, &message) {
                Ok(clock) => clock,
                Err(status) => {
                    failure = Some(status);
                    break;
                }
            };
            let checked = self.check(message.events, &clock, &mut report.index);
            let checked = match self.resolve_types(checked).await {
                Ok(checked) => checked,
                Err(error) => {
                    failure = Some(error.into());
                    break;
                }
            };
            self.report(&mut report, checked.rejections);
            if checked.valid.is_empty() {
                continue;
            }
            // Waits while every stream together holds the whole budget.
            let sent = tokio::select! {
                biased;
                () = &mut revoked => {
                    cut.cancel();
                    failure = Some(revoked_failure());
                    break;
                }
                sent = async {
                    let permit = state.memory.reserve(&checked.valid).await;
                    batches.send((checked.valid, permit)).await
                } => sent,
            };
            if sent.is_err() {
                // The writer stopped on an error; it is reported below.
                break;
            }
        }
        drop(batches);
        let written = writer
            .await
            .map_err(|e| Status::from(Error::internal("ingest writer task failed", e)))?;
        match (failure, written) {
            (Some(status), _) => Err(status),
            (None, Err(error)) => Err(error.into()),
            (None, Ok(totals)) => Ok(Response::new(report.finish(totals))),
        }
    }

    async fn upsert_users(
        &self,
        request: Request<UpsertUsersRequest>,
    ) -> Result<Response<UpsertUsersResponse>, Status> {
        let caller = request.extensions().get::<Caller>().copied();
        let users = request.into_inner().users;
        if users.len() > MAX_USERS_PER_REQUEST {
            return Err(Status::invalid_argument(format!(
                "{} users in one request; the limit is {MAX_USERS_PER_REQUEST}",
                users.len()
            )));
        }
        // Each user row is a write like an event: it is paid for from the
        // key's events/s budget before any work is done.
        if let Some(caller) = caller {
            self.state
                .quotas
                .take_events(caller.key_id, users.len() as u64)
                .map_err(Error::from)?;
        }
        // The last entry for a user id wins.
        let mut by_id = std::collections::BTreeMap::new();
        for (i, user) in users.into_iter().enumerate() {
            let valid = validate_user(user.user_id, user.username, user.email)
                .map_err(|why| Status::invalid_argument(format!("users[{i}]: {why}")))?;
            by_id.insert(valid.user_id.clone(), valid);
        }
        let mut users: Vec<_> = by_id.into_values().collect();
        if users.is_empty() {
            return Ok(Response::new(UpsertUsersResponse::default()));
        }
        let mut conn = connection(&self.state.pool).await?;
        let outcome = upsert_users(&mut conn, &mut users).await?;
        Ok(Response::new(UpsertUsersResponse {
            created: outcome.created,
            updated: outcome.updated,
        }))
    }
}
