//! `pulse demo`: a server plus synthetic traffic, so the dashboard is alive
//! within seconds of one command.
//!
//! It starts a normal Pulse server (the same [`App`] as `pulse serve`) on
//! its own database (`pulse_demo` by default), then drives it only through
//! its public gRPC API, as any client would:
//! * live events from the loadgen generator (`loadgen/generate.rs`) at a
//!   rate that follows a compressed "day" (`--day-length`, 10 min) with
//!   occasional bursts (×4) and dips (×0.1), from the first second;
//! * meanwhile, on a database without events, a backfill of the past week
//!   (see [`HistoryPlan`]): the last `--history` exactly as the live traffic
//!   would have been, then a density that falls from the live one to a
//!   floor over [`RAMP_SECONDS`], with a real day's rhythm (peak 14:00 UTC),
//!   `--backfill` events in all. Every bucket of the 7-day view is filled,
//!   so it shows days and nights rather than a flat line and a spike. The
//!   newest history is sent first, so the short ranges are full at once;
//!   the demo prints when the week is complete ("ready");
//! * three alert rules sized to that rate, so they fire in bursts or dips
//!   and resolve after.

use std::f64::consts::TAU;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::app::{App, shutdown_signal};
use crate::config::{ServeSettings, parse_duration};
use crate::error::{Error, Result};
use crate::grpc::convert::to_timestamp;
use crate::grpc::proto::alert_service_client::AlertServiceClient;
use crate::grpc::proto::ingest_service_client::IngestServiceClient;
use crate::grpc::proto::query_service_client::QueryServiceClient;
use crate::grpc::proto::{self, IngestEventsRequest};
use crate::loadgen::generate::{Generator, GeneratorConfig, TimePlan, UuidKind};

/// Settings of `pulse demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoSettings {
    /// PostgreSQL URL of the demo's database (created if missing). Not
    /// `DATABASE_URL`, so the demo never writes into a real database by accident.
    #[arg(
        long = "database-url",
        env = "PULSE_DEMO_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/pulse_demo"
    )]
    pub database_url: String,

    /// Address of the gRPC listener.
    #[arg(
        long = "grpc-addr",
        env = "PULSE_GRPC_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP listener (the dashboard).
    #[arg(
        long = "http-addr",
        env = "PULSE_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,

    /// Events per second at the peak of the demo's day (the backfilled week
    /// is denser, relative to it, the lower it is).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,

    /// Length of the demo's compressed day: traffic rises and falls over it.
    #[arg(long = "day-length", default_value = "10m", value_parser = parse_duration)]
    pub day_length: Duration,

    /// Events backfilled over the week before `--history` when the database
    /// has none (more: a denser week and a longer wait until it is complete).
    #[arg(long, default_value_t = DEFAULT_BACKFILL)]
    pub backfill: u64,

    /// Recent history backfilled exactly at the live rate and rhythm, so the
    /// short ranges start full (0 for none).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub history: Duration,

    /// Stop this long (e.g. 30s, 10m) after the history is in place; unset:
    /// run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

/// Where in its day the demo starts: late morning, so the first minutes
/// are lively.
const START_PHASE: f64 = 0.3;
/// How often live traffic is sent.
const TICK: Duration = Duration::from_millis(250);
/// `--backfill`'s default: about a minute of ingest on a 2-core machine.
pub const DEFAULT_BACKFILL: u64 = 1_200_000;
/// Time constant (seconds) of the backfill's fall from the live density at
/// `--history` to the week's floor.
pub const RAMP_SECONDS: f64 = 4.0 * 3600.0;
/// The mean of [`daily`] over a day: live traffic's density, in units of
/// `--rate`, over any span of several compressed days.
const DAILY_MEAN: f64 = 0.65;
/// Backfill: concurrent `IngestEvents` streams, messages per stream and
/// events per message.
const BACKFILL_STREAMS: usize = 4;
const BACKFILL_MESSAGES: usize = 5;
const BACKFILL_BATCH: usize = 2_000;
/// Users, pages and products of the demo's generator.
const USERS: u64 = 5_000;
const PAGES: u64 = 120;
const PRODUCTS: u64 = 60;

/// `pulse demo`: runs until Ctrl-C (or `--duration` after the backfill).
pub async fn run(settings: DemoSettings) -> anyhow::Result<()> {
    check(&settings)?;
    let mut serve = ServeSettings::for_database(&settings.database_url);
    serve.grpc_addr = settings.grpc_addr;
    serve.http_addr = settings.http_addr;
    let app = App::build(serve).await?;
    let grpc_addr = loopback(app.grpc_addr());
    let http_addr = loopback(app.http_addr());

    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run(stop.clone().cancelled_owned()));
    let channel = Endpoint::from_shared(format!("http://{grpc_addr}"))
        .map_err(|e| Error::internal("endpoint", e))?
        .connect()
        .await
        .map_err(|e| Error::unavailable("cannot reach the demo server", e))?;
    print_banner(&settings, grpc_addr, http_addr);

    let seed: u64 = rand::rng().random();
    let outcome = tokio::select! {
        result = drive(&channel, &settings, seed) => result,
        () = interrupted(settings.duration) => Ok(()),
    };
    stop.cancel();
    let served = server
        .await
        .map_err(|e| Error::internal("demo server task", e))?;
    outcome?;
    served
}

/// Refuses a `--rate` or `--day-length` the traffic cannot follow.
fn check(settings: &DemoSettings) -> Result<()> {
    if !(settings.rate.is_finite() && settings.rate > 0.0) {
        return Err(Error::InvalidArgument("--rate must be above 0".into()));
    }
    if settings.day_length.is_zero() {
        return Err(Error::InvalidArgument(
            "--day-length must be above 0".into(),
        ));
    }
    Ok(())
}

/// Tells where the demo's dashboard, API, metrics and database are.
fn print_banner(settings: &DemoSettings, grpc_addr: SocketAddr, http_addr: SocketAddr) {
    println!("Pulse demo");
    println!("  dashboard  http://{http_addr}/");
    println!("  gRPC       {grpc_addr}   (grpcurl -plaintext {grpc_addr} list)");
    println!("  metrics    http://{http_addr}/metrics");
    println!("  database   {}", settings.database_url);
    println!(
        "Traffic peaks at {} events/s over a {} s \"day\", with bursts and dips. Ctrl-C stops.",
        settings.rate,
        settings.day_length.as_secs()
    );
}

/// The demo's work: rules, live traffic and, on a database without events,
/// the backfill beside it; then live traffic until `--duration` is over
/// (or for ever).
async fn drive(channel: &Channel, settings: &DemoSettings, seed: u64) -> Result<()> {
    create_rules(channel, settings.rate).await?;
    // Live traffic starts now; the history ends where it starts.
    let history_end = Utc::now();
    let live = live_traffic(channel, settings, seed);
    tokio::pin!(live);
    if is_empty(channel).await? {
        tokio::select! {
            result = backfill(channel, settings, history_end, seed ^ 0x6261_636b) => result?,
            () = &mut live => {}
        }
    } else {
        println!("The database has events already: no backfill. Ready.");
    }
    // `--duration` counts from here, with the history in place.
    match settings.duration {
        Some(d) => tokio::select! {
            () = &mut live => {}
            () = tokio::time::sleep(d) => {}
        },
        None => live.await,
    }
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM when the demo has no `--duration`;
/// with one, never: the demo then ends when its time is up.
async fn interrupted(duration: Option<Duration>) {
    match duration {
        Some(_) => std::future::pending().await,
        None => shutdown_signal().await,
    }
}

/// A wildcard listener is reached through loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// The traffic multiplier of the demo's day at `phase` (0..1): a trough of
/// 0.3 at "night" (phase 0) and a peak of 1 at "noon" (phase 0.5).
fn daily(phase: f64) -> f64 {
    0.3 + 0.7 * (0.5 - 0.5 * (TAU * phase).cos())
}

/// The same shape over a real day, for the backfill (peak at 14:00 UTC).
fn daily_at(t: DateTime<Utc>) -> f64 {
    let hours = f64::from(t.hour()) + f64::from(t.minute()) / 60.0;
    daily(((hours - 2.0) / 24.0).rem_euclid(1.0))
}

fn generator(seed: u64) -> Generator {
    Generator::new(GeneratorConfig {
        seed,
        users: USERS,
        pages: PAGES,
        products: PRODUCTS,
        zipf_exponent: 1.0,
        uuid: UuidKind::V7,
        time: TimePlan::Now {
            id_base: Utc::now(),
        },
    })
}

fn rule(
    name: &str,
    metric: proto::Metric,
    event_types: &[&str],
    window_seconds: u32,
    comparison: proto::Comparison,
    threshold: f64,
    for_seconds: u32,
) -> proto::AlertRule {
    proto::AlertRule {
        id: String::new(),
        name: name.to_owned(),
        metric: metric as i32,
        filter: Some(proto::Filter {
            event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
            ..Default::default()
        }),
        window_seconds,
        comparison: comparison as i32,
        threshold: threshold.round(),
        for_seconds,
        enabled: true,
    }
}

/// Creates the demo's rules unless rules of the same names exist. Sized to
/// the peak rate: bursts fire "Traffic burst" and "Sign-up surge"; dips and
/// the night of each demo day fire "Checkout stalled".
async fn create_rules(channel: &Channel, rate: f64) -> Result<()> {
    let per_minute = rate * 60.0;
    let rules = [
        rule(
            "Traffic burst",
            proto::Metric::Events,
            &[],
            60,
            proto::Comparison::GreaterThan,
            per_minute * 1.4,
            0,
        ),
        rule(
            "Sign-up surge",
            proto::Metric::Events,
            &["sign_up"],
            60,
            proto::Comparison::GreaterThan,
            per_minute * 0.05 * 1.6,
            5,
        ),
        rule(
            "Checkout stalled",
            proto::Metric::Purchases,
            &[],
            60,
            proto::Comparison::LessThan,
            per_minute * 0.1 * 0.4,
            10,
        ),
    ];
    let mut client = AlertServiceClient::new(channel.clone());
    let existing: Vec<String> = client
        .list_alert_rules(proto::ListAlertRulesRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .rules
        .into_iter()
        .map(|r| r.name)
        .collect();
    for rule in rules {
        if existing.contains(&rule.name) {
            continue;
        }
        client
            .create_alert_rule(proto::CreateAlertRuleRequest { rule: Some(rule) })
            .await
            .map_err(status_error)?;
    }
    Ok(())
}

fn status_error(status: tonic::Status) -> Error {
    Error::Unavailable(format!("demo call failed: {:?} {}", status.code(), status.message()).into())
}

/// True when the last 8 days hold no event.
async fn is_empty(channel: &Channel) -> Result<bool> {
    let end = Utc::now() + TimeDelta::minutes(1);
    let answer = QueryServiceClient::new(channel.clone())
        .get_metrics(proto::GetMetricsRequest {
            metric: proto::Metric::Events as i32,
            start: Some(to_timestamp(end - TimeDelta::days(8))),
            end: Some(to_timestamp(end)),
            granularity: proto::Granularity::Total as i32,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    Ok(answer.series.iter().all(|s| s.total == 0.0))
}

/// The density of the backfilled week before `--history` (events per
/// second at `t`): `rate × scale × ((1 − r) × floor × daily_at(t) + r ×
/// DAILY_MEAN)` with `r = e^(−(age − history) / RAMP)`. At the `--history`
/// edge (`r = 1`) that is the live traffic's mean density; far back
/// (`r → 0`) it is `floor` of the live rate with a real day's rhythm.
/// `floor` is chosen so the week holds `budget` events; a budget too small
/// for even the ramp shrinks the ramp (`scale < 1`, floor 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryPlan {
    pub rate: f64,
    pub history_end: DateTime<Utc>,
    /// Seconds of history at the live rate before `history_end`.
    pub history: f64,
    pub floor: f64,
    pub scale: f64,
}

/// The backfilled week ends `history` before `history_end` and is 7 days long.
const WEEK_SECONDS: f64 = 7.0 * 86400.0;

impl HistoryPlan {
    pub fn new(rate: f64, history_end: DateTime<Utc>, history: f64, budget: u64) -> Self {
        let mut plan = Self {
            rate,
            history_end,
            history,
            floor: 0.0,
            scale: 1.0,
        };
        // The week's events: `floor × waves + ramp`, summed minute by minute.
        let (mut waves, mut ramp) = (0.0, 0.0);
        plan.for_each_minute(|start, seconds| {
            let mid = start + TimeDelta::milliseconds((seconds * 500.0) as i64);
            let r = plan.decay(mid);
            waves += rate * (1.0 - r) * daily_at(mid) * seconds;
            ramp += rate * r * DAILY_MEAN * seconds;
        });
        let budget = budget as f64;
        if budget <= ramp {
            plan.scale = budget / ramp.max(f64::MIN_POSITIVE);
        } else if waves > 0.0 {
            plan.floor = ((budget - ramp) / waves).min(1.0);
        }
        plan
    }

    fn age(&self, t: DateTime<Utc>) -> f64 {
        (self.history_end - t).num_milliseconds() as f64 / 1000.0
    }

    fn decay(&self, t: DateTime<Utc>) -> f64 {
        (-(self.age(t) - self.history).max(0.0) / RAMP_SECONDS).exp()
    }

    /// Events per second at `t` (a time before the `--history` edge).
    pub fn density(&self, t: DateTime<Utc>) -> f64 {
        let r = self.decay(t);
        self.rate * self.scale * ((1.0 - r) * self.floor * daily_at(t) + r * DAILY_MEAN)
    }

    /// Calls `f(start, seconds)` for each minute of the week, newest first
    /// (the newest may be shorter: the edge need not be minute-aligned).
    fn for_each_minute(&self, mut f: impl FnMut(DateTime<Utc>, f64)) {
        let edge = self.history_end - TimeDelta::milliseconds((self.history * 1000.0) as i64);
        let oldest = edge - TimeDelta::milliseconds((WEEK_SECONDS * 1000.0) as i64);
        let mut end = edge;
        while end > oldest {
            let start =
                crate::domain::metric::floor_to(end - TimeDelta::milliseconds(1), 60).max(oldest);
            f(start, (end - start).num_milliseconds() as f64 / 1000.0);
            end = start;
        }
    }

    /// Event times: the `--history` second by second as live traffic would
    /// have sent them, then the week minute by minute; newest first by
    /// second or minute, ascending within one. Also returns how many of
    /// them are the `--history`'s (the first ones).
    pub fn times(&self, day_length: f64, rng: &mut StdRng) -> (Vec<DateTime<Utc>>, usize) {
        let mut times = Vec::new();
        for second in 1..=(self.history as i64) {
            let phase = (-(second as f64) / day_length + START_PHASE).rem_euclid(1.0);
            let count = self.rate * daily(phase) + rng.random::<f64>();
            let at = self.history_end - TimeDelta::seconds(second);
            let first = times.len();
            for _ in 0..count.floor() as u64 {
                times.push(at + TimeDelta::milliseconds(rng.random_range(0..1000)));
            }
            times[first..].sort_unstable();
        }
        let recent = times.len();
        let mut carry = rng.random::<f64>();
        self.for_each_minute(|start, seconds| {
            let mid = start + TimeDelta::milliseconds((seconds * 500.0) as i64);
            let expected = self.density(mid) * seconds + carry;
            let count = expected.floor();
            carry = expected - count;
            let first = times.len();
            let span = (seconds * 1000.0) as i64;
            for _ in 0..count as u64 {
                times.push(start + TimeDelta::milliseconds(rng.random_range(0..span.max(1))));
            }
            times[first..].sort_unstable();
        });
        (times, recent)
    }
}

/// History for an empty database (see [`HistoryPlan`]), sent while live
/// traffic runs: first the `--history` (the short ranges are then
/// complete), then the week, newest first, over [`BACKFILL_STREAMS`]
/// concurrent streams.
async fn backfill(
    channel: &Channel,
    settings: &DemoSettings,
    history_end: DateTime<Utc>,
    seed: u64,
) -> Result<()> {
    let started = std::time::Instant::now();
    let plan = HistoryPlan::new(
        settings.rate,
        history_end,
        settings.history.as_secs_f64(),
        settings.backfill,
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let (times, recent) = plan.times(settings.day_length.as_secs_f64(), &mut rng);
    let total = times.len();
    println!(
        "Backfilling {total} events: the last {} s at the live rate, then 7 days from that rate down to {:.0} % of it far back…",
        settings.history.as_secs(),
        plan.floor * plan.scale * 100.0
    );
    let progress = Progress {
        started,
        total,
        sent: std::sync::atomic::AtomicUsize::new(0),
        every: (total / 10).max(1),
    };
    let generator = generator(seed);
    send_history(channel, &generator, &times[..recent], 0, &progress).await?;
    println!(
        "  the last {} s are in ({recent} events, {:.1} s)",
        settings.history.as_secs(),
        started.elapsed().as_secs_f64()
    );
    send_history(channel, &generator, &times[recent..], recent, &progress).await?;
    println!(
        "Ready: the week is backfilled ({total} events in {:.1} s).",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The backfill's progress, printed every tenth.
struct Progress {
    started: std::time::Instant,
    total: usize,
    sent: std::sync::atomic::AtomicUsize,
    every: usize,
}

impl Progress {
    fn add(&self, n: usize) {
        let before = self.sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let after = before + n;
        if after / self.every != before / self.every && after < self.total {
            let secs = self.started.elapsed().as_secs_f64();
            println!(
                "  {after} of {} events ({:.0} %) in {secs:.0} s, {:.0} events/s",
                self.total,
                100.0 * after as f64 / self.total.max(1) as f64,
                after as f64 / secs.max(1e-3)
            );
        }
    }
}

/// Sends events at `times` (generator indices from `first`) in streams of
/// [`BACKFILL_MESSAGES`] × [`BACKFILL_BATCH`], [`BACKFILL_STREAMS`] at a time.
async fn send_history(
    channel: &Channel,
    generator: &Generator,
    times: &[DateTime<Utc>],
    first: usize,
    progress: &Progress,
) -> Result<()> {
    let unit = BACKFILL_BATCH * BACKFILL_MESSAGES;
    let units = times.chunks(unit).enumerate().map(|(u, chunk)| {
        let mut client = IngestServiceClient::new(channel.clone());
        let messages: Vec<IngestEventsRequest> = chunk
            .chunks(BACKFILL_BATCH)
            .enumerate()
            .map(|(m, batch)| {
                let base = (first + u * unit + m * BACKFILL_BATCH) as u64;
                let events = batch
                    .iter()
                    .enumerate()
                    .map(|(k, at)| {
                        let mut event = generator.event(base + k as u64).to_proto();
                        event.timestamp = Some(to_timestamp(*at));
                        event
                    })
                    .collect();
                IngestEventsRequest {
                    events,
                    sent_at: None,
                }
            })
            .collect();
        async move {
            client
                .ingest_events(tokio_stream::iter(messages))
                .await
                .map_err(status_error)?;
            progress.add(chunk.len());
            Ok::<(), Error>(())
        }
    });
    futures::stream::iter(units)
        .buffer_unordered(BACKFILL_STREAMS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn send(client: &mut IngestServiceClient<Channel>, events: Vec<proto::Event>) -> Result<()> {
    let request = IngestEventsRequest {
        events,
        sent_at: None,
    };
    client
        .ingest_events(tokio_stream::iter(vec![request]))
        .await
        .map_err(status_error)?;
    Ok(())
}

/// What the live traffic is doing besides following the day.
#[derive(Debug, Clone, Copy)]
enum Mood {
    Normal,
    Burst { until: tokio::time::Instant },
    Dip { until: tokio::time::Instant },
}

/// Sends live events every [`TICK`] until the caller stops awaiting.
async fn live_traffic(channel: &Channel, settings: &DemoSettings, seed: u64) {
    let generator = generator(seed);
    let mut client = IngestServiceClient::new(channel.clone());
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let day = settings.day_length.as_secs_f64();
    let tick = TICK.as_secs_f64();
    let mut mood = Mood::Normal;
    let mut index = 0u64;
    let mut carry = 0.0f64;
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        interval.tick().await;
        let now = tokio::time::Instant::now();
        let phase = (started.elapsed().as_secs_f64() / day + START_PHASE).rem_euclid(1.0);
        mood = match mood {
            Mood::Burst { until } | Mood::Dip { until } if now >= until => Mood::Normal,
            Mood::Normal if rng.random::<f64>() < tick / 75.0 => Mood::Burst {
                until: now + Duration::from_secs(rng.random_range(15..35)),
            },
            Mood::Normal if rng.random::<f64>() < tick / 150.0 => Mood::Dip {
                until: now + Duration::from_secs(rng.random_range(30..60)),
            },
            other => other,
        };
        let factor = match mood {
            Mood::Normal => 1.0,
            Mood::Burst { .. } => 4.0,
            Mood::Dip { .. } => 0.1,
        };
        let expected = settings.rate * daily(phase) * factor * tick + carry;
        let count = expected.floor();
        carry = expected - count;
        let events: Vec<proto::Event> = (0..count as u64)
            .map(|k| generator.event(index + k).to_proto())
            .collect();
        index += events.len() as u64;
        if events.is_empty() {
            continue;
        }
        if let Err(error) = send(&mut client, events).await {
            tracing::warn!(%error, "demo traffic: a batch was not ingested");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_has_a_night_and_a_noon() {
        assert!((daily(0.0) - 0.3).abs() < 1e-9);
        assert!((daily(0.5) - 1.0).abs() < 1e-9);
        let night = DateTime::parse_from_rfc3339("2026-11-28T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let noon = DateTime::parse_from_rfc3339("2026-11-28T14:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(daily_at(night) < 0.31);
        assert!(daily_at(noon) > 0.99);
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_backfilled_week_spends_its_budget_with_a_floor_and_a_ramp() {
        let end = at("2026-11-28T14:20:30Z");
        let plan = HistoryPlan::new(10.0, end, 3600.0, 1_200_000);
        assert!(plan.floor > 0.2 && plan.floor < 1.0, "{plan:?}");
        assert_eq!(plan.scale, 1.0);
        let mut rng = StdRng::seed_from_u64(7);
        let (times, recent) = plan.times(600.0, &mut rng);
        let edge = end - TimeDelta::hours(1);
        let week: Vec<_> = times.iter().filter(|t| **t < edge).collect();
        assert_eq!(recent, times.len() - week.len());
        assert!(times[..recent].iter().all(|t| *t >= edge));
        // The week holds the budget (to rounding); the last hour is at the
        // live rate, whose mean over compressed days is DAILY_MEAN × rate.
        assert!(
            (week.len() as f64 - 1_200_000.0).abs() < 2.0,
            "{}",
            week.len()
        );
        let live_hour = 10.0 * DAILY_MEAN * 3600.0;
        assert!(
            (recent as f64 - live_hour).abs() < 0.1 * live_hour,
            "{recent}"
        );
        assert!(
            times
                .iter()
                .all(|t| *t < end && *t >= edge - TimeDelta::days(7))
        );
        // At the edge the live density; far back the floor's rhythm, busy
        // afternoons and quiet nights, never empty.
        let at_edge = plan.density(edge - TimeDelta::seconds(1));
        assert!(
            (at_edge / (10.0 * DAILY_MEAN) - 1.0).abs() < 0.01,
            "{at_edge}"
        );
        let count = |from: DateTime<Utc>| {
            week.iter()
                .filter(|t| ***t >= from && ***t < from + TimeDelta::hours(1))
                .count() as f64
        };
        let afternoon = count(at("2026-11-23T14:00:00Z"));
        let night = count(at("2026-11-23T02:00:00Z"));
        assert!(night > 0.2 * 10.0 * 3600.0 * plan.floor, "{night}");
        assert!(afternoon > 3.0 * night, "{afternoon} vs {night}");
        assert!(
            afternoon > 0.35 * live_hour,
            "far back is visible: {afternoon} vs {live_hour}"
        );
    }

    #[test]
    fn a_small_backfill_budget_shrinks_the_ramp() {
        let end = at("2026-11-28T14:20:30Z");
        let plan = HistoryPlan::new(10.0, end, 60.0, 5_000);
        assert_eq!(plan.floor, 0.0);
        assert!(plan.scale < 1.0);
        let (times, _) = plan.times(600.0, &mut StdRng::seed_from_u64(1));
        let week = times
            .iter()
            .filter(|t| **t < end - TimeDelta::seconds(60))
            .count();
        assert!((week as f64 - 5_000.0).abs() < 2.0, "{week}");
    }
}
