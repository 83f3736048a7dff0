//! Sending generated events over `IngestEvents` and measuring the result.
//!
//! The run is cut into *units* of `--messages-per-stream` × `--batch-size`
//! consecutive events; each unit is one `IngestEvents` stream. `--concurrency`
//! workers, each on its own connection, take units in index order. A unit's
//! latency runs from its start to the server's response, which the server
//! sends only once every accepted event is committed: with one message per
//! stream it is the ack latency of a batch.
//!
//! With `--rate R` unit `u` is *scheduled* at `t0 + first_event(u) / R` and
//! its latency counts from that instant, not from when a worker got round
//! to it: when the server falls behind, the queueing shows up in the
//! latency instead of silently lowering the offered load.
//!
//! A stream that fails with a transient status (UNAVAILABLE, UNKNOWN,
//! DEADLINE_EXCEEDED, ABORTED, CANCELLED, INTERNAL) is resent whole, up to
//! [`MAX_RETRIES`] times with exponential backoff; events committed before
//! the failure come back as duplicates, which the report counts.
//!
//! A refusal that a resend would meet again (UNAUTHENTICATED,
//! PERMISSION_DENIED, INVALID_ARGUMENT, …: see [`is_fatal`]) is never
//! retried: the first one stops every worker and the run ends with an error
//! that says what to change (a missing or wrong `--api-key`, the batch size).
//! Connection errors name the host and port they were trying.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::{Stream, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::LoadgenSettings;
use super::generate::{Generator, TimePlan};
use crate::error::{Error, Result};
use crate::grpc::convert::to_timestamp;
use crate::grpc::proto::ingest_service_client::IngestServiceClient;
use crate::grpc::proto::{IngestEventsRequest, IngestEventsResponse};

/// Resends of one failed stream before its events count as failed.
pub const MAX_RETRIES: u32 = 5;
/// Backoff before the first resend; it doubles for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Per-event errors and stream failures quoted in the report.
const SAMPLES: usize = 5;

/// How the run is cut into streams.
#[derive(Debug, Clone, Copy)]
struct Plan {
    events: u64,
    batch: u64,
    per_stream: u64,
    units: u64,
    rate: Option<f64>,
    duration: Option<Duration>,
}

impl Plan {
    fn range(&self, unit: u64) -> (u64, u64) {
        let first = unit * self.per_stream;
        (first, (first + self.per_stream).min(self.events))
    }

    /// The instant the unit starting at event `first` counts its latency
    /// from: under `--rate` its scheduled instant (slept until), else now.
    /// `None` when the unit would start at or after `deadline`.
    async fn start(&self, first: u64, t0: Instant, deadline: Option<Instant>) -> Option<Instant> {
        let scheduled = self
            .rate
            .map(|rate| t0 + Duration::from_secs_f64(first as f64 / rate));
        if let Some(at) = scheduled {
            if deadline.is_some_and(|d| at >= d) {
                return None;
            }
            tokio::time::sleep_until(at.into()).await;
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        Some(scheduled.unwrap_or_else(Instant::now))
    }
}

/// What the workers share.
struct Shared {
    generator: Generator,
    plan: Plan,
    /// Events are stamped when sent (no explicit timestamps).
    stamp_events: bool,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// `host:port` of the server, for messages.
    target: String,
    next_unit: AtomicU64,
    acknowledged: AtomicU64,
    /// Set by the first refusal a resend would meet again; every worker
    /// stops at its next unit.
    stopped: AtomicBool,
    fatal: Mutex<Option<Status>>,
}

/// One worker's tally, merged at the end.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    acknowledged: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    failed: u64,
    streams: u64,
    retries: u64,
    latencies_us: Vec<u64>,
    rejections: Vec<String>,
    failures: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.acknowledged += other.acknowledged;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
        self.failed += other.failed;
        self.streams += other.streams;
        self.retries += other.retries;
        self.latencies_us.extend(other.latencies_us);
        for (samples, more) in [
            (&mut self.rejections, other.rejections),
            (&mut self.failures, other.failures),
        ] {
            let room = SAMPLES.saturating_sub(samples.len());
            samples.extend(more.into_iter().take(room));
        }
    }

    /// Counts the response to a unit of `events` events from `first`,
    /// acknowledged `latency` after its start, quoting the first rejections.
    fn record_response(
        &mut self,
        response: IngestEventsResponse,
        first: u64,
        events: u64,
        latency: Duration,
    ) {
        self.latencies_us
            .push(latency.as_micros().try_into().unwrap_or(u64::MAX));
        self.acknowledged += events;
        self.accepted += response.accepted;
        self.duplicates += response.duplicates;
        self.rejected += response.rejected;
        for error in response.errors {
            if self.rejections.len() < SAMPLES {
                self.rejections.push(format!(
                    "event {} ({}): {}",
                    first + error.index,
                    error.event_id,
                    error.reason
                ));
            }
        }
    }

    /// Counts the failed unit of events `first..end`, quoting the first
    /// failures with the server and the resends tried.
    fn record_failure(
        &mut self,
        status: &Status,
        first: u64,
        end: u64,
        retries: u32,
        target: &str,
    ) {
        self.failed += end - first;
        if self.failures.len() < SAMPLES {
            let resends = match retries {
                0 => String::new(),
                n => format!(" (after {n} resends)"),
            };
            self.failures.push(format!(
                "events {first}..{end}: {:?} from {target}: {}{resends}",
                status.code(),
                status.message()
            ));
        }
    }
}

fn normalize_addr(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// Refusals that a resend would meet again: the run stops at the first.
/// (RESOURCE_EXHAUSTED is a per-key rate limit: the stream fails, the run
/// goes on.)
fn is_fatal(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::NotFound
    )
}

/// An error with its causes, `outer: inner: innermost` (tonic's transport
/// error alone says only "transport error").
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The error a run ends with after a refusal [`is_fatal`] says to stop at.
fn fatal_error(status: &Status, target: &str, has_key: bool) -> Error {
    let message = status.message();
    Error::FailedPrecondition(match status.code() {
        Code::Unauthenticated if !has_key => format!(
            "the server at {target} needs an API key ({message}): pass --api-key KEY or set \
             PULSE_API_KEY, with a key of scope ingest or admin (create one with \
             `pulse keys create --scope ingest --name loadgen`)"
        ),
        Code::Unauthenticated => format!(
            "the server at {target} refused the API key ({message}): check --api-key / PULSE_API_KEY"
        ),
        Code::PermissionDenied => format!(
            "the API key may not ingest on {target} ({message}): use a key of scope ingest or admin"
        ),
        code => format!(
            "the server at {target} refused the events with {code:?}: {message} \
             (not retried: a resend would be refused the same way)"
        ),
    })
}

fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Internal
    )
}

impl Shared {
    /// Stops every worker at its next unit after a refusal [`is_fatal`]
    /// says to stop at; the first such refusal is the one reported.
    fn stop(&self, status: Status) {
        self.stopped.store(true, Ordering::Relaxed);
        let mut fatal = self
            .fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        fatal.get_or_insert(status);
    }

    /// The message carrying events `first..end`.
    fn message(&self, first: u64, end: u64) -> IngestEventsRequest {
        IngestEventsRequest {
            events: (first..end)
                .map(|i| self.generator.event(i).to_proto())
                .collect(),
            sent_at: None,
        }
    }

    /// The stream of messages of events `first..end`, starting with `head`
    /// (already built); the others are built as the stream is sent. Each
    /// message gets its `sent_at` (and, when stamping, its events' timestamps)
    /// at the moment it is handed to the transport.
    fn stream(
        self: &Arc<Self>,
        head: IngestEventsRequest,
        first: u64,
        end: u64,
    ) -> impl Stream<Item = IngestEventsRequest> + Send + 'static {
        let batch = self.plan.batch;
        let builder = self.clone();
        let stamp_events = self.stamp_events;
        let rest = futures::stream::iter((first + batch..end).step_by(batch as usize))
            .map(move |start| builder.message(start, (start + batch).min(end)));
        futures::stream::once(async move { head })
            .chain(rest)
            .map(move |mut message| {
                let now = to_timestamp(Utc::now());
                if stamp_events {
                    for event in &mut message.events {
                        event.timestamp = Some(now);
                    }
                }
                message.sent_at = Some(now);
                message
            })
    }

    /// Sends events `first..end` as one stream, resending it whole after a
    /// transient failure. Returns the response and the number of resends.
    async fn send_unit(
        self: &Arc<Self>,
        client: &mut IngestServiceClient<Channel>,
        first: u64,
        end: u64,
        mut head: Option<IngestEventsRequest>,
    ) -> (std::result::Result<IngestEventsResponse, Status>, u32) {
        let mut retries = 0;
        loop {
            let message = head
                .take()
                .unwrap_or_else(|| self.message(first, (first + self.plan.batch).min(end)));
            let mut request = Request::new(self.stream(message, first, end));
            if let Some(value) = &self.authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
            }
            match client.ingest_events(request).await {
                Ok(response) => return (Ok(response.into_inner()), retries),
                Err(status)
                    if retries < MAX_RETRIES
                        && is_transient(status.code())
                        && !self.stopped.load(Ordering::Relaxed) =>
                {
                    retries += 1;
                    tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(retries - 1)).await;
                }
                Err(status) => return (Err(status), retries),
            }
        }
    }
}

/// One worker: takes units in index order over its own connection until
/// none is left, `--duration` is over or a fatal refusal stopped the run.
async fn worker(shared: Arc<Shared>, channel: Channel, t0: Instant) -> Tally {
    let mut client = IngestServiceClient::new(channel);
    let plan = shared.plan;
    let deadline = plan.duration.map(|d| t0 + d);
    let mut tally = Tally::default();
    loop {
        if shared.stopped.load(Ordering::Relaxed) {
            break;
        }
        let unit = shared.next_unit.fetch_add(1, Ordering::Relaxed);
        if unit >= plan.units {
            break;
        }
        let (first, end) = plan.range(unit);
        // Built before the clock starts: generating is the client's work.
        let head = shared.message(first, (first + plan.batch).min(end));
        let Some(start) = plan.start(first, t0, deadline).await else {
            break;
        };
        let (outcome, retries) = shared.send_unit(&mut client, first, end, Some(head)).await;
        let events = end - first;
        tally.sent += events;
        tally.streams += 1;
        tally.retries += u64::from(retries);
        match outcome {
            Ok(response) => {
                tally.record_response(response, first, events, start.elapsed());
                shared.acknowledged.fetch_add(events, Ordering::Relaxed);
            }
            Err(status) => {
                tally.record_failure(&status, first, end, retries, &shared.target);
                if is_fatal(status.code()) {
                    shared.stop(status);
                }
            }
        }
    }
    tally
}

/// Percentile `q` (0..=1) of sorted `values`, nearest rank, in ms.
fn percentile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// The server the run talks to, and the connections it talks over.
struct Connections {
    /// `--grpc-addr` with a scheme, as dialled.
    addr: String,
    /// `host:port` of the server, for messages.
    target: String,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// One per worker.
    channels: Vec<Channel>,
}

impl Connections {
    /// Checks `--grpc-addr` and `--api-key`, then opens `--concurrency`
    /// connections; an error names the address and how to change it.
    async fn open(settings: &LoadgenSettings) -> Result<Self> {
        let addr = normalize_addr(&settings.grpc_addr);
        let endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| Error::InvalidArgument(format!("--grpc-addr `{addr}`: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let target = endpoint
            .uri()
            .authority()
            .map_or_else(|| addr.clone(), ToString::to_string);
        let authorization = match &settings.api_key {
            None => None,
            Some(key) => Some(
                format!("Bearer {key}")
                    .parse()
                    .map_err(|_| Error::InvalidArgument("--api-key is not valid ASCII".into()))?,
            ),
        };
        let mut channels = Vec::with_capacity(settings.concurrency);
        for _ in 0..settings.concurrency {
            channels.push(endpoint.connect().await.map_err(|e| {
                Error::Unavailable(
                    format!(
                        "cannot connect to Pulse at {target} ({}): is `pulse serve` running \
                         there? (--grpc-addr / PULSE_LOADGEN_GRPC_ADDR, now {addr})",
                        chain(&e)
                    )
                    .into(),
                )
            })?);
        }
        Ok(Self {
            addr,
            target,
            authorization,
            channels,
        })
    }
}

impl Plan {
    /// The run's cut into streams, from the settings.
    fn new(settings: &LoadgenSettings) -> Self {
        let per_stream = settings
            .batch_size
            .saturating_mul(settings.messages_per_stream);
        Plan {
            events: settings.events,
            batch: settings.batch_size,
            per_stream,
            units: settings.events.div_ceil(per_stream),
            rate: (settings.rate > 0.0).then_some(settings.rate),
            duration: settings.duration,
        }
    }
}

/// Prints the events acknowledged so far every 5 s, until aborted.
fn spawn_progress(shared: Arc<Shared>, t0: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick =
            tokio::time::interval_at((t0 + Duration::from_secs(5)).into(), Duration::from_secs(5));
        loop {
            tick.tick().await;
            let now = shared.acknowledged.load(Ordering::Relaxed);
            eprintln!(
                "loadgen: {:>6.0} s  {now} events acknowledged  {:.0} events/s",
                t0.elapsed().as_secs_f64(),
                (now - last) as f64 / 5.0
            );
            last = now;
        }
    })
}

/// Runs one worker per channel and merges their tallies.
async fn run_workers(shared: &Arc<Shared>, channels: Vec<Channel>, t0: Instant) -> Result<Tally> {
    let workers: Vec<_> = channels
        .into_iter()
        .map(|channel| tokio::spawn(worker(shared.clone(), channel, t0)))
        .collect();
    let mut tally = Tally::default();
    for handle in workers {
        let part = handle
            .await
            .map_err(|e| Error::internal("a loadgen worker failed", e))?;
        tally.merge(part);
    }
    Ok(tally)
}

/// Prints the report of a run that took `wall` seconds (sorting the
/// latencies); `paced` says latencies count from the scheduled start.
fn print_report(tally: &mut Tally, wall: f64, paced: bool) {
    tally.latencies_us.sort_unstable();
    let lat = &tally.latencies_us;
    let (p50, p90, p99, max) = (
        percentile_ms(lat, 0.50),
        percentile_ms(lat, 0.90),
        percentile_ms(lat, 0.99),
        percentile_ms(lat, 1.0),
    );
    let per_second = if wall > 0.0 {
        tally.acknowledged as f64 / wall
    } else {
        0.0
    };
    println!("events sent      {}", tally.sent);
    println!("  accepted       {}", tally.accepted);
    println!("  duplicates     {}", tally.duplicates);
    println!("  rejected       {}", tally.rejected);
    println!("  failed         {}", tally.failed);
    println!(
        "streams          {} ({} resends)",
        tally.streams, tally.retries
    );
    println!("wall seconds     {wall:.3}");
    println!("events/s         {per_second:.0}");
    println!(
        "ack latency ms   p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  max {max:.2}  ({} streams{})",
        lat.len(),
        if paced { ", from scheduled start" } else { "" }
    );
    for sample in &tally.rejections {
        println!("rejected: {sample}");
    }
    for sample in &tally.failures {
        println!("failed: {sample}");
    }
    println!(
        "RESULT events_per_s={per_second:.0} p50_ms={p50:.2} p90_ms={p90:.2} p99_ms={p99:.2} max_ms={max:.2} \
         sent={} accepted={} duplicates={} rejected={} failed={} wall_s={wall:.3}",
        tally.sent, tally.accepted, tally.duplicates, tally.rejected, tally.failed
    );
}

/// Sends the run's events and prints the report.
pub async fn run(settings: &LoadgenSettings, generator: Generator) -> Result<()> {
    let Connections {
        addr,
        target,
        authorization,
        channels,
    } = Connections::open(settings).await?;
    let plan = Plan::new(settings);
    let shared = Arc::new(Shared {
        stamp_events: matches!(generator.config().time, TimePlan::Now { .. }),
        generator,
        plan,
        authorization,
        target,
        next_unit: AtomicU64::new(0),
        acknowledged: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        fatal: Mutex::new(None),
    });
    let pace = match plan.rate {
        Some(rate) => format!("at {rate:.0} events/s"),
        None => "flat out".to_owned(),
    };
    eprintln!(
        "loadgen: {} events to {addr}, {} streams of {} × {} events, {} connections, {pace}",
        plan.events, plan.units, settings.messages_per_stream, plan.batch, settings.concurrency
    );

    let t0 = Instant::now();
    let progress = spawn_progress(shared.clone(), t0);
    let mut tally = run_workers(&shared, channels, t0).await?;
    let wall = t0.elapsed().as_secs_f64();
    progress.abort();
    let fatal = shared
        .fatal
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .map(|status| fatal_error(&status, &shared.target, settings.api_key.is_some()));
    let fatal = match fatal {
        // Nothing was acknowledged: a report of zeros would only hide why.
        Some(error) if tally.acknowledged == 0 => return Err(error),
        other => other,
    };

    print_report(&mut tally, wall, plan.rate.is_some());
    if let Some(error) = fatal {
        return Err(error);
    }
    if tally.failed > 0 {
        return Err(Error::Unavailable(
            format!(
                "{} of {} events sent were not acknowledged by {} (failures above)",
                tally.failed, tally.sent, shared.target
            )
            .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).map(|v| v * 1000).collect();
        assert_eq!(percentile_ms(&values, 0.5), 50.0);
        assert_eq!(percentile_ms(&values, 0.99), 99.0);
        assert_eq!(percentile_ms(&values, 1.0), 100.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn units_cover_every_event_once() {
        let plan = Plan {
            events: 1_050,
            batch: 100,
            per_stream: 500,
            units: 1_050u64.div_ceil(500),
            rate: None,
            duration: None,
        };
        assert_eq!(plan.units, 3);
        assert_eq!(plan.range(0), (0, 500));
        assert_eq!(plan.range(2), (1_000, 1_050));
        assert_eq!(normalize_addr("127.0.0.1:1"), "http://127.0.0.1:1");
        assert_eq!(normalize_addr("https://x:1"), "https://x:1");
    }
}
