//! `pulse demo`: a server plus synthetic traffic, so the dashboard is alive
//! within seconds of one command.
//!
//! It starts a normal Pulse server (the same [`App`] as `pulse serve`) on
//! its own database (`pulse_demo` by default), then drives it only through
//! its public gRPC API, as any client would:
//! * on a database without events, a backfill of the past 7 days with a
//!   daily pattern and of the last hour at the live rate, so every range of
//!   the dashboard has history;
//! * live events from the loadgen generator (`loadgen/generate.rs`) at a
//!   rate that follows a compressed "day" (`--day-length`, 10 min) with
//!   occasional bursts (×4) and dips (×0.1);
//! * three alert rules sized to that rate, so they fire in bursts or dips
//!   and resolve after.

use std::f64::consts::TAU;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use clap::Args;
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

    /// Events per second at the peak of the demo's day.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,

    /// Length of the demo's compressed day: traffic rises and falls over it.
    #[arg(long = "day-length", default_value = "10m", value_parser = parse_duration)]
    pub day_length: Duration,

    /// Events generated over the past 7 days when the database has none.
    #[arg(long, default_value_t = 100_000)]
    pub backfill: u64,

    /// Recent history sent at the live rate, so the 15 min and 1 h views
    /// start full (0 for none).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub history: Duration,

    /// Stop after this long (e.g. 30s, 10m); unset: run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

/// Where in its day the demo starts: late morning, so the first minutes
/// are lively.
const START_PHASE: f64 = 0.3;
/// How often live traffic is sent.
const TICK: Duration = Duration::from_millis(250);
/// Users, pages and products of the demo's generator.
const USERS: u64 = 5_000;
const PAGES: u64 = 120;
const PRODUCTS: u64 = 60;

/// `pulse demo`: runs until Ctrl-C (or `--duration`).
pub async fn run(settings: DemoSettings) -> Result<()> {
    if !(settings.rate.is_finite() && settings.rate > 0.0) {
        return Err(Error::InvalidArgument("--rate must be above 0".into()));
    }
    if settings.day_length.is_zero() {
        return Err(Error::InvalidArgument(
            "--day-length must be above 0".into(),
        ));
    }
    let mut serve = ServeSettings::for_database(&settings.database_url);
    serve.grpc_addr = settings.grpc_addr;
    serve.http_addr = settings.http_addr;
    let app = App::build(serve).await?;
    let grpc_addr = loopback(app.grpc_addr());
    let http_addr = loopback(app.http_addr());

    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run(stop.clone().cancelled_owned()));
    let channel = Endpoint::from_shared(format!("http://{grpc_addr}"))
        .map_err(|e| Error::Internal(format!("endpoint: {e}")))?
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("cannot reach the demo server: {e}")))?;

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

    let seed: u64 = rand::rng().random();
    let work = async {
        create_rules(&channel, settings.rate).await?;
        if is_empty(&channel).await? {
            backfill(&channel, &settings, seed ^ 0x6261_636b).await?;
        }
        live_traffic(&channel, &settings, seed).await;
        Ok::<(), Error>(())
    };
    let ended = async {
        match settings.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => shutdown_signal().await,
        }
    };
    let outcome = tokio::select! {
        result = work => result,
        () = ended => Ok(()),
    };
    stop.cancel();
    let served = server
        .await
        .map_err(|e| Error::Internal(format!("demo server task: {e}")))?;
    outcome.and(served)
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
    Error::Unavailable(format!(
        "demo call failed: {:?} {}",
        status.code(),
        status.message()
    ))
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

/// History for an empty database: `--backfill` candidate events spread
/// over the past 7 days, thinned by the daily pattern, then the last
/// `--history` at the live rate and shape (as if the demo had been running).
/// Sent in messages of 2,000.
async fn backfill(channel: &Channel, settings: &DemoSettings, seed: u64) -> Result<()> {
    println!("Backfilling history…");
    let generator = generator(seed);
    let now = Utc::now();
    let history = TimeDelta::from_std(settings.history)
        .map_err(|_| Error::InvalidArgument("--history is too long".into()))?;
    let week_end = now - history;
    let week = TimeDelta::days(7);
    let week_ms = week.num_milliseconds() as f64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut times = Vec::new();
    for i in 0..settings.backfill {
        let slot = (i as f64 + rng.random::<f64>()) / settings.backfill as f64;
        let at = week_end - week + TimeDelta::milliseconds((slot * week_ms) as i64);
        if rng.random::<f64>() <= daily_at(at) {
            times.push(at);
        }
    }
    let day = settings.day_length.as_secs_f64();
    for second in (1..=history.num_seconds()).rev() {
        let phase = (-(second as f64) / day + START_PHASE).rem_euclid(1.0);
        let count = settings.rate * daily(phase) + rng.random::<f64>();
        for _ in 0..count.floor() as u64 {
            let jitter = rng.random_range(0..1000);
            times.push(now - TimeDelta::seconds(second) + TimeDelta::milliseconds(jitter));
        }
    }
    let mut client = IngestServiceClient::new(channel.clone());
    for (chunk_index, chunk) in times.chunks(2_000).enumerate() {
        let first = (chunk_index * 2_000) as u64;
        let events = chunk
            .iter()
            .enumerate()
            .map(|(k, at)| {
                let mut event = generator.event(first + k as u64).to_proto();
                event.timestamp = Some(to_timestamp(*at));
                event
            })
            .collect();
        send(&mut client, events).await?;
    }
    println!("Backfilled {} events.", times.len());
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
}
