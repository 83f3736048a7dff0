//! Typed settings for every subcommand.
//!
//! Each flag and its environment variable is declared once, here, with the
//! default the README's configuration table documents. Settings are passed
//! down as values, never read from a global, so tests can run many servers
//! with different settings in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::alerts::clock::SharedClock;

/// Where the database is and how many connections Pulse may hold.
#[derive(Debug, Clone, Args)]
pub struct DatabaseSettings {
    /// PostgreSQL URL. The database is created if it does not exist.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/pulse"
    )]
    pub url: String,

    /// Most connections held by one Pulse process.
    #[arg(
        long = "db-pool-size",
        env = "PULSE_DB_POOL_SIZE",
        default_value_t = 16
    )]
    pub pool_size: usize,

    /// How long a call waits for a free connection before failing with UNAVAILABLE.
    #[arg(long = "db-pool-timeout", env = "PULSE_DB_POOL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub pool_timeout: Duration,

    /// Server-side limit on one SQL statement (PostgreSQL `statement_timeout`).
    #[arg(long = "db-statement-timeout", env = "PULSE_DB_STATEMENT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub statement_timeout: Duration,
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per record.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging settings, shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct LogSettings {
    /// Log format.
    #[arg(long = "log-format", env = "PULSE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub format: LogFormat,

    /// Log filter in `tracing` syntax, e.g. `info` or `pulse=debug,info`.
    #[arg(long = "log", env = "RUST_LOG", default_value = "info", global = true)]
    pub filter: String,
}

/// Limits on what clients may send. Every limit is enforced with a clear error.
#[derive(Debug, Clone, Args)]
pub struct IngestLimits {
    /// Largest gRPC message accepted, in bytes (RESOURCE_EXHAUSTED above it).
    #[arg(long = "max-message-bytes", env = "PULSE_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Most events in one IngestEventsRequest (INVALID_ARGUMENT above it).
    #[arg(
        long = "max-events-per-message",
        env = "PULSE_MAX_EVENTS_PER_MESSAGE",
        default_value_t = 10_000
    )]
    pub max_events_per_message: usize,

    /// Largest `data` of one event, in bytes of its JSON form (the event is rejected above it).
    #[arg(long = "max-data-bytes", env = "PULSE_MAX_DATA_BYTES", default_value_t = 8 * 1024)]
    pub max_data_bytes: usize,

    /// Longest string field (event_type, user_id, page_url, product_id, ...) in bytes.
    #[arg(
        long = "max-string-bytes",
        env = "PULSE_MAX_STRING_BYTES",
        default_value_t = 2048
    )]
    pub max_string_bytes: usize,

    /// Most per-event errors listed in one IngestEventsResponse (the counts stay exact).
    #[arg(
        long = "max-errors-reported",
        env = "PULSE_MAX_ERRORS_REPORTED",
        default_value_t = 1000
    )]
    pub max_errors_reported: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_events_per_message: 10_000,
            max_data_bytes: 8 * 1024,
            max_string_bytes: 2048,
            max_errors_reported: 1000,
        }
    }
}

/// Per-API-key abuse limits (per instance; 0 turns a limit off). Calls
/// without a key (no key exists, loopback only) are not limited.
#[derive(Debug, Clone, Args)]
pub struct KeyLimitSettings {
    /// Ingest events per second per key (RESOURCE_EXHAUSTED with a retry hint above it).
    #[arg(
        long = "key-events-per-second",
        env = "PULSE_KEY_EVENTS_PER_SECOND",
        default_value_t = 50_000
    )]
    pub events_per_second: u32,

    /// GetMetrics calls and dashboard API requests per second per key.
    #[arg(
        long = "key-queries-per-second",
        env = "PULSE_KEY_QUERIES_PER_SECOND",
        default_value_t = 200
    )]
    pub queries_per_second: u32,

    /// Concurrent IngestEvents streams per key.
    #[arg(
        long = "key-max-ingest-streams",
        env = "PULSE_KEY_MAX_INGEST_STREAMS",
        default_value_t = 32
    )]
    pub max_ingest_streams: u32,
}

impl Default for KeyLimitSettings {
    fn default() -> Self {
        Self {
            events_per_second: 50_000,
            queries_per_second: 200,
            max_ingest_streams: 32,
        }
    }
}

/// Optional TLS for both listeners; both files or neither.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsSettings {
    /// PEM certificate chain served on the gRPC and HTTP listeners.
    #[arg(long = "tls-cert", env = "PULSE_TLS_CERT")]
    pub cert: Option<PathBuf>,

    /// PEM private key of the certificate.
    #[arg(long = "tls-key", env = "PULSE_TLS_KEY")]
    pub key: Option<PathBuf>,
}

/// What the dashboard shows (handed to the page in `/api/v1/dashboard`).
#[derive(Debug, Clone, Args)]
pub struct DashboardSettings {
    /// ISO 4217 code of the currency purchase amounts are in (USD, EUR, JPY, ...); the dashboard formats revenue in it.
    #[arg(long = "currency", env = "PULSE_CURRENCY", default_value = "USD", value_parser = parse_currency)]
    pub currency: String,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            currency: "USD".to_owned(),
        }
    }
}

/// An ISO 4217 currency code: three ASCII letters, returned upper-case.
pub fn parse_currency(text: &str) -> Result<String, String> {
    let code = text.trim();
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_uppercase())
    } else {
        Err(format!(
            "`{text}` is not an ISO 4217 currency code such as USD, EUR or JPY"
        ))
    }
}

/// Settings of `pulse serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    #[command(flatten)]
    pub database: DatabaseSettings,

    /// Address of the gRPC listener (port 0 picks a free port).
    #[arg(
        long = "grpc-addr",
        env = "PULSE_GRPC_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP listener (dashboard, /metrics).
    #[arg(
        long = "http-addr",
        env = "PULSE_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,

    /// Do not run pending migrations at start (fail if any are pending).
    #[arg(long = "no-migrate", env = "PULSE_NO_MIGRATE")]
    pub no_migrate: bool,

    /// How often the database is probed for the health service.
    #[arg(long = "health-interval", env = "PULSE_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// How long in-flight calls get to finish after SIGINT/SIGTERM.
    #[arg(long = "shutdown-grace", env = "PULSE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How often pending rollup deltas are folded into the rollup tables.
    #[arg(long = "rollup-interval", env = "PULSE_ROLLUP_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub rollup_interval: Duration,

    /// Memory for the GetMetrics cache, in bytes (0 turns it off).
    #[arg(long = "query-cache-bytes", env = "PULSE_QUERY_CACHE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub query_cache_bytes: usize,

    /// How often the evaluating instance evaluates every alert rule.
    #[arg(long = "alert-interval", env = "PULSE_ALERT_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub alert_interval: Duration,

    /// Live notifications buffered per instance; a WatchAlerts subscriber
    /// further behind than this is caught up from the table.
    #[arg(
        long = "alert-feed-capacity",
        env = "PULSE_ALERT_FEED_CAPACITY",
        default_value_t = 1024
    )]
    pub alert_feed_capacity: usize,

    /// The clock the alert evaluator reads; the system clock, except in
    /// tests, which inject a manual one.
    #[arg(skip)]
    pub alert_clock: SharedClock,

    /// How often the API keys are reloaded from the database (how soon a
    /// new or revoked key takes effect on this instance).
    #[arg(long = "key-refresh-interval", env = "PULSE_KEY_REFRESH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub key_refresh_interval: Duration,

    #[command(flatten)]
    pub limits: IngestLimits,

    #[command(flatten)]
    pub key_limits: KeyLimitSettings,

    #[command(flatten)]
    pub tls: TlsSettings,

    #[command(flatten)]
    pub maintenance: MaintenanceSettings,

    #[command(flatten)]
    pub dashboard: DashboardSettings,

    /// PostgreSQL URL of a streaming replica for GetMetrics reads (none:
    /// every read goes to the primary). See ARCHITECTURE.md "Read replica".
    #[arg(long = "read-database-url", env = "PULSE_READ_DATABASE_URL")]
    pub read_database_url: Option<String>,

    /// Longest wait for the replica to replay this instance's last write
    /// before a read falls back to the primary.
    #[arg(long = "replica-wait", env = "PULSE_REPLICA_WAIT", default_value = "200ms", value_parser = parse_duration)]
    pub replica_wait: Duration,
}

/// Scheduled maintenance jobs of `pulse serve` (each runs on one instance
/// at a time). An interval or a retention of 0 turns the job off.
#[derive(Debug, Clone, Args)]
pub struct MaintenanceSettings {
    /// Raw events (and their pageview/purchase details) older than this many
    /// days are deleted; rollups are kept. 0 keeps raw events forever.
    #[arg(
        long = "retention-days",
        env = "PULSE_RETENTION_DAYS",
        default_value_t = 0
    )]
    pub retention_days: u32,

    /// How often the retention job runs (when retention is on).
    #[arg(long = "retention-interval", env = "PULSE_RETENTION_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// Events deleted per retention transaction.
    #[arg(
        long = "retention-batch",
        env = "PULSE_RETENTION_BATCH",
        default_value_t = 5000
    )]
    pub retention_batch: u32,

    /// How often the hot tables get `VACUUM (ANALYZE)`; 0 leaves them to autovacuum.
    #[arg(long = "vacuum-interval", env = "PULSE_VACUUM_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub vacuum_interval: Duration,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        Self {
            retention_days: 0,
            retention_interval: Duration::from_secs(600),
            retention_batch: 5000,
            vacuum_interval: Duration::from_secs(3600),
        }
    }
}

impl ServeSettings {
    /// Settings for a server on free loopback ports against `database_url`,
    /// with every other value at its documented default. Used by tests and
    /// by embedding programs.
    pub fn for_database(database_url: &str) -> Self {
        Self {
            database: DatabaseSettings {
                url: database_url.to_owned(),
                pool_size: 16,
                pool_timeout: Duration::from_secs(5),
                statement_timeout: Duration::from_secs(30),
            },
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            no_migrate: false,
            health_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            rollup_interval: Duration::from_millis(500),
            query_cache_bytes: 32 * 1024 * 1024,
            alert_interval: Duration::from_millis(500),
            alert_feed_capacity: 1024,
            alert_clock: SharedClock::default(),
            key_refresh_interval: Duration::from_secs(1),
            limits: IngestLimits::default(),
            key_limits: KeyLimitSettings::default(),
            tls: TlsSettings::default(),
            maintenance: MaintenanceSettings::default(),
            dashboard: DashboardSettings::default(),
            read_database_url: None,
            replica_wait: Duration::from_millis(200),
        }
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 5s, 2m or 1h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}` (use ms, s, m, h or d)"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn currencies_are_three_letters() {
        assert_eq!(parse_currency("eur"), Ok("EUR".to_owned()));
        assert_eq!(parse_currency("USD"), Ok("USD".to_owned()));
        assert!(parse_currency("US").is_err());
        assert!(parse_currency("€").is_err());
        assert!(parse_currency("US1").is_err());
    }
}
