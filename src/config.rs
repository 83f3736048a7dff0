//! Typed settings for every subcommand.
//!
//! Each flag and its environment variable is declared once, here, with the
//! default the README's configuration table documents. Settings are passed
//! down as values, never read from a global, so tests can run many servers
//! with different settings in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches, ValueEnum};

use crate::alerts::clock::SharedClock;

/// Where the database is and how many connections Pulse may hold.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseSettings {
    /// PostgreSQL URL; the database is created if missing. A password in it
    /// is never shown (help, logs, errors).
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/pulse"
    )]
    pub url: String,

    /// Connections for ingest (IngestEvents, UpsertUsers). Queries and
    /// background work have pools of their own, so they never take these.
    #[arg(
        long = "db-pool-size",
        env = "PULSE_DB_POOL_SIZE",
        default_value_t = 16
    )]
    pub pool_size: usize,

    /// Connections for queries: GetMetrics, the dashboard API, alert rules
    /// and WatchAlerts replays.
    #[arg(
        long = "db-query-pool-size",
        env = "PULSE_DB_QUERY_POOL_SIZE",
        default_value_t = 8
    )]
    pub query_pool_size: usize,

    /// Connections for background work: rollup folds, the alert evaluator,
    /// API-key reloads.
    #[arg(
        long = "db-background-pool-size",
        env = "PULSE_DB_BACKGROUND_POOL_SIZE",
        default_value_t = 6
    )]
    pub background_pool_size: usize,

    /// How long a call waits for a free connection before failing with UNAVAILABLE.
    #[arg(long = "db-pool-timeout", env = "PULSE_DB_POOL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub pool_timeout: Duration,

    /// Server-side limit on one SQL statement (PostgreSQL `statement_timeout`)
    /// of ingest and background work.
    #[arg(long = "db-statement-timeout", env = "PULSE_DB_STATEMENT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub statement_timeout: Duration,

    /// Budget of one query (GetMetrics, a dashboard API read) on the
    /// database: past it the statement is cancelled and the call refused
    /// with RESOURCE_EXHAUSTED, instead of holding a connection.
    #[arg(long = "db-query-timeout", env = "PULSE_DB_QUERY_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub query_timeout: Duration,
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per record.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging settings, shared by every subcommand. Colours only when stderr
/// is a terminal and `NO_COLOR` is unset.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
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
#[command(next_help_heading = "Limits on what clients send")]
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

    /// Most distinct event types the database may hold (at most 32,767: the
    /// id is a smallint). An event of a new type past it is rejected alone.
    #[arg(
        long = "max-event-types",
        env = "PULSE_MAX_EVENT_TYPES",
        default_value_t = 10_000,
        value_parser = parse_max_event_types
    )]
    pub max_event_types: usize,

    /// Bytes of validated events all IngestEvents streams together may hold
    /// before they are written; a stream past it waits (backpressure), so
    /// many streams of large messages cannot grow the server without bound.
    #[arg(
        long = "ingest-memory-bytes",
        env = "PULSE_INGEST_MEMORY_BYTES",
        default_value_t = 16 * 1024 * 1024
    )]
    pub ingest_memory_bytes: usize,
}

fn parse_max_event_types(text: &str) -> Result<usize, String> {
    let max = crate::db::ingest::MAX_EVENT_TYPE_IDS;
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{text}` is not a number of event types from 1 to {max} (event type ids are smallints)"
        )),
    }
}

/// Per-API-key abuse limits (per instance; 0 turns a limit off). Calls
/// without a key (no key exists, loopback only) are not limited.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Per-API-key limits")]
pub struct QuotaSettings {
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

    /// GetMetrics calls and dashboard API requests running at once per key.
    #[arg(
        long = "key-max-concurrent-queries",
        env = "PULSE_KEY_MAX_CONCURRENT_QUERIES",
        default_value_t = 4
    )]
    pub max_concurrent_queries: u32,
}

/// How both listeners treat connections: caps, handshake and idle
/// timeouts, HTTP/2 limits (see `src/listen.rs`).
#[derive(Debug, Clone, Args)]
pub struct ConnectionSettings {
    /// Most open connections on the gRPC listener; past it the connection
    /// idle longest is closed to make room (or the new one refused if every
    /// connection has a call running).
    #[arg(
        long = "grpc-max-connections",
        env = "PULSE_GRPC_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub grpc_max_connections: usize,

    /// Most open connections on the HTTP listener (same policy).
    #[arg(
        long = "http-max-connections",
        env = "PULSE_HTTP_MAX_CONNECTIONS",
        default_value_t = 256
    )]
    pub http_max_connections: usize,

    /// A new connection must have sent its first complete request (TLS
    /// handshake, HTTP/2 preface, HTTP/1 headers) within this, or it is closed.
    #[arg(long = "header-read-timeout", env = "PULSE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A connection with no request running for this long is closed.
    #[arg(long = "idle-timeout", env = "PULSE_IDLE_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Most concurrent HTTP/2 streams (calls) per connection.
    #[arg(
        long = "http2-max-concurrent-streams",
        env = "PULSE_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 1024
    )]
    pub http2_max_concurrent_streams: u32,

    /// Streams a client may open and reset before the server accepts them,
    /// per connection (the "rapid reset" attack); past it the connection is
    /// closed.
    #[arg(
        long = "http2-max-pending-reset-streams",
        env = "PULSE_HTTP2_MAX_PENDING_RESET_STREAMS",
        default_value_t = 20
    )]
    pub http2_max_pending_reset_streams: usize,

    /// How often an HTTP/2 connection is pinged to find peers that vanished.
    #[arg(long = "http2-keepalive-interval", env = "PULSE_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long = "http2-keepalive-timeout", env = "PULSE_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub http2_keepalive_timeout: Duration,
}

/// Optional TLS for both listeners; both files or neither.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "TLS")]
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
#[command(next_help_heading = "Dashboard")]
pub struct DashboardSettings {
    /// ISO 4217 code of the currency purchase amounts are in (USD, EUR, JPY, ...); the dashboard formats revenue in it.
    #[arg(long = "currency", env = "PULSE_CURRENCY", default_value = "USD", value_parser = parse_currency)]
    pub currency: String,
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
        help_heading = "Listeners",
        long = "grpc-addr",
        env = "PULSE_GRPC_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP listener (dashboard, /metrics, /healthz, /readyz).
    #[arg(
        help_heading = "Listeners",
        long = "http-addr",
        env = "PULSE_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,

    /// Names (`name` or `name:port`) the HTTP listener answers to besides IP
    /// addresses and `localhost`; requests naming any other Host are refused
    /// (DNS rebinding). Repeat the flag, or separate names with commas.
    #[arg(long = "public-host", env = "PULSE_PUBLIC_HOST", value_delimiter = ',')]
    pub public_hosts: Vec<String>,

    /// Do not run pending migrations at start (fail if any are pending).
    #[arg(
        long = "no-migrate",
        env = "PULSE_NO_MIGRATE",
        help_heading = "Database"
    )]
    pub no_migrate: bool,

    /// How often the database is probed for the health service.
    #[arg(help_heading = "Background work", long = "health-interval", env = "PULSE_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// How long in-flight calls get to finish after SIGINT/SIGTERM.
    #[arg(help_heading = "Background work", long = "shutdown-grace", env = "PULSE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How often pending rollup deltas are folded into the rollup tables.
    #[arg(help_heading = "Background work", long = "rollup-interval", env = "PULSE_ROLLUP_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub rollup_interval: Duration,

    /// Memory for the GetMetrics cache, in bytes (0 turns it off).
    #[arg(help_heading = "Background work", long = "query-cache-bytes", env = "PULSE_QUERY_CACHE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub query_cache_bytes: usize,

    /// Rollup data one GetMetrics request may hold, in bytes: a request
    /// that needs more (e.g. minute series over a week of a dimension with
    /// very many values) is refused with RESOURCE_EXHAUSTED.
    #[arg(help_heading = "Background work", long = "query-memory-bytes", env = "PULSE_QUERY_MEMORY_BYTES", default_value_t = 48 * 1024 * 1024)]
    pub query_memory_bytes: usize,

    /// How often the evaluating instance evaluates every alert rule.
    #[arg(help_heading = "Background work", long = "alert-interval", env = "PULSE_ALERT_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub alert_interval: Duration,

    /// Live notifications buffered per instance; a WatchAlerts subscriber
    /// further behind than this is caught up from the table.
    #[arg(
        help_heading = "Background work",
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
    #[arg(help_heading = "Background work", long = "key-refresh-interval", env = "PULSE_KEY_REFRESH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub key_refresh_interval: Duration,

    #[command(flatten)]
    pub limits: IngestLimits,

    #[command(flatten)]
    pub quotas: QuotaSettings,

    #[command(flatten)]
    pub tls: TlsSettings,

    #[command(flatten)]
    pub connections: ConnectionSettings,

    #[command(flatten)]
    pub maintenance: MaintenanceSettings,

    #[command(flatten)]
    pub dashboard: DashboardSettings,

    /// PostgreSQL URL of a streaming replica for GetMetrics reads (none:
    /// every read goes to the primary). See docs/internals.md "Read replica".
    #[arg(
        long = "read-database-url",
        env = "PULSE_READ_DATABASE_URL",
        hide_env_values = true,
        help_heading = "Read replica"
    )]
    pub read_database_url: Option<String>,

    /// Longest wait for the replica to replay this instance's last write
    /// before a read falls back to the primary.
    #[arg(help_heading = "Read replica", long = "replica-wait", env = "PULSE_REPLICA_WAIT", default_value = "200ms", value_parser = parse_duration)]
    pub replica_wait: Duration,
}

/// Scheduled maintenance jobs of `pulse serve` (each runs on one instance
/// at a time). An interval or a retention of 0 turns the job off.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Maintenance jobs")]
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

impl ServeSettings {
    /// Settings for a server on free loopback ports against `database_url`,
    /// with every other value at its documented default. Used by tests and
    /// by embedding programs.
    pub fn for_database(database_url: &str) -> Self {
        // The defaults are the clap attributes above, parsed from an empty
        // command line with environment variables ignored: one source.
        let command = Self::augment_args(clap::Command::new("pulse")).mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(["pulse"])
            .expect("every serve setting has a default");
        let mut settings =
            Self::from_arg_matches(&matches).expect("the defaults parse as settings");
        database_url.clone_into(&mut settings.database.url);
        settings.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        settings
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
    fn embedded_defaults_are_the_command_line_defaults() {
        let s = ServeSettings::for_database("postgres://x@h/db");
        assert_eq!(s.database.url, "postgres://x@h/db");
        assert_eq!(s.grpc_addr.port(), 0);
        assert_eq!(s.database.query_timeout, Duration::from_secs(2));
        assert_eq!(s.limits.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(s.quotas.max_concurrent_queries, 4);
        assert_eq!(s.connections.idle_timeout, Duration::from_secs(120));
        assert_eq!(s.maintenance.retention_days, 0);
        assert_eq!(s.dashboard.currency, "USD");
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
