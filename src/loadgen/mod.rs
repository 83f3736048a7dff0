//! `pulse loadgen`: a load generator for `IngestService/IngestEvents`, and
//! the CSV writer of the ingest benchmark.
//!
//! * [`generate`] makes a deterministic, realistic event mix: event `i` is a
//!   pure function of (`--seed`, `i`, the generator flags), so two runs with
//!   the same flags produce the same rows.
//! * [`send`] streams those events to a server: `--concurrency` workers, each
//!   opening one `IngestEvents` stream per `--messages-per-stream` ×
//!   `--batch-size` events, flat out or paced by `--rate`, with retries, and
//!   reports throughput and ack latency.
//! * [`csv`] writes the same rows as CSV files for `psql \copy`
//!   (`--write-csv DIR`), so `scripts/bench-ingest.sh` can compare
//!   `IngestEvents` with COPY on identical data.
//!
//! Timestamps (`--days`, `--base-time`):
//! * `--days D > 0`: events spread uniformly over the `D` days before the
//!   base time, in index order (so rows arrive nearly sorted by time);
//! * `--days 0` with `--base-time T`: event `i` happens at `T + i µs`;
//! * `--days 0` without `--base-time` (the default): gRPC events are
//!   stamped with the moment their message is sent; `--write-csv` uses the
//!   start of the run as `T`.
//!
//! The base time defaults to the start of the run, so only runs given the
//! same `--base-time` (and seed, sizes, `--uuid`) produce identical rows; with
//! UUIDv7 ids the event ids depend on the timestamps too.

pub mod csv;
pub mod generate;
pub mod send;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;

use crate::config::parse_duration;
use crate::error::{Error, Result};
use generate::{Generator, GeneratorConfig, TimePlan, UuidKind};

/// Settings of `pulse loadgen`.
#[derive(Debug, Clone, Args)]
pub struct LoadgenSettings {
    /// The Pulse gRPC endpoint (`http://host:port`; a bare `host:port` works too).
    #[arg(
        long = "grpc-addr",
        env = "PULSE_LOADGEN_GRPC_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub grpc_addr: String,

    /// API key sent as `authorization: Bearer …` (needs the `ingest` scope).
    #[arg(long = "api-key", env = "PULSE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Events to generate in total.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,

    /// Seed of the generator: the same seed (and flags) gives the same events.
    #[arg(long, env = "PULSE_LOADGEN_SEED", default_value_t = 1)]
    pub seed: u64,

    /// Distinct users (`user-000000` …), drawn from a Zipf distribution.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,

    /// Distinct page URLs (`/`, `/products/N`, `/blog/…-N`), Zipf-distributed.
    #[arg(long, default_value_t = 1_000)]
    pub pages: u64,

    /// Distinct products (`sku-00000` …), Zipf-distributed.
    #[arg(long, default_value_t = 500)]
    pub products: u64,

    /// Exponent s of the Zipf distributions (weight of rank k is 1/k^s).
    #[arg(long = "zipf-exponent", default_value_t = 1.0)]
    pub zipf_exponent: f64,

    /// Spread timestamps over the last D days before the base time (fractions
    /// allowed); 0 means "now" (see --base-time).
    #[arg(long, default_value_t = 0.0)]
    pub days: f64,

    /// Base time (RFC 3339, e.g. 2026-12-01T12:00:00Z): the end of the
    /// --days range, or with --days 0 the time of event 0 (event i at base +
    /// i µs). Default: the start of the run, and with --days 0 over gRPC each
    /// event is stamped when sent.
    #[arg(long = "base-time", value_parser = parse_time)]
    pub base_time: Option<DateTime<Utc>>,

    /// Event id kind: time-ordered UUIDv7 or random UUIDv4.
    #[arg(long, value_enum, default_value_t = UuidKind::V7)]
    pub uuid: UuidKind,

    /// Concurrent IngestEvents streams (one connection each).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,

    /// Events per IngestEventsRequest message.
    #[arg(long = "batch-size", default_value_t = 500)]
    pub batch_size: u64,

    /// Messages per stream. With 1, a stream's latency (open → response) is
    /// the ack latency of one batch.
    #[arg(long = "messages-per-stream", default_value_t = 1)]
    pub messages_per_stream: u64,

    /// Target events per second over all streams; 0 sends flat out. With a
    /// rate, streams start on a fixed schedule and latency is measured from
    /// the scheduled start, so queueing is not hidden (no coordinated omission).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,

    /// Stop starting streams after this long (e.g. 60, 60s, 2m); unset: send all --events.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Spread clicks over N distinct event types `click_0` … (a stress shape
    /// for cardinality benchmarks; 0: plain `click`). Not with --write-csv.
    #[arg(long = "event-types", default_value_t = 0)]
    pub event_types: u64,

    /// Pad each event's `data` to about N bytes (a stress shape for message
    /// size benchmarks; 0: 100–200 bytes as generated).
    #[arg(long = "data-bytes", default_value_t = 0)]
    pub data_bytes: usize,

    /// Write the events as CSV files into DIR for `psql \copy` instead of
    /// sending them (users.csv, events.csv, pageviews.csv, purchases.csv).
    #[arg(long = "write-csv", value_name = "DIR")]
    pub write_csv: Option<PathBuf>,
}

fn parse_time(text: &str) -> std::result::Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2026-12-01T12:00:00Z: {e}"))
}

impl LoadgenSettings {
    fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidArgument(what.to_owned()));
        if self.users == 0 || self.pages == 0 || self.products == 0 {
            return bad("--users, --pages and --products must be at least 1");
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            return bad("--zipf-exponent must be a finite number ≥ 0");
        }
        if !(self.days.is_finite() && self.days >= 0.0) {
            return bad("--days must be a finite number ≥ 0");
        }
        if self.concurrency == 0 || self.batch_size == 0 || self.messages_per_stream == 0 {
            return bad("--concurrency, --batch-size and --messages-per-stream must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return bad("--rate must be a finite number ≥ 0");
        }
        if self.write_csv.is_some() && self.event_types > 0 {
            return bad(
                "--event-types is for gRPC runs only: the CSV rows use the four seeded type ids",
            );
        }
        Ok(())
    }

    /// The generator these flags describe. `now` is the start of the run.
    pub fn generator(&self, now: DateTime<Utc>) -> Generator {
        let base = self.base_time.unwrap_or(now);
        let time = if self.days > 0.0 {
            TimePlan::Spread {
                end: base,
                span: TimeDelta::microseconds((self.days * 86_400e6) as i64),
                events: self.events,
            }
        } else if self.base_time.is_some() || self.write_csv.is_some() {
            TimePlan::Sequence { base }
        } else {
            TimePlan::Now { id_base: base }
        };
        Generator::new(GeneratorConfig {
            seed: self.seed,
            users: self.users,
            pages: self.pages,
            products: self.products,
            zipf_exponent: self.zipf_exponent,
            uuid: self.uuid,
            time,
        })
        .with_shape(self.event_types, self.data_bytes)
    }
}

/// `pulse loadgen`.
pub async fn run(settings: LoadgenSettings) -> Result<()> {
    settings.check()?;
    let generator = settings.generator(Utc::now());
    match settings.write_csv.clone() {
        Some(dir) => {
            let events = settings.events;
            let users = settings.users;
            let summary = tokio::task::spawn_blocking(move || {
                csv::write_all(&generator, &dir, events, users).map(|s| (s, dir))
            })
            .await
            .map_err(|e| Error::internal("the CSV writer failed", e))?;
            let (summary, dir) = summary?;
            summary.print(&dir);
            Ok(())
        }
        None => send::run(&settings, generator).await,
    }
}
