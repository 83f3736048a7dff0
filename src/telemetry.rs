//! Telemetry: what Pulse says about itself (logs, and the Prometheus
//! registry served at `/metrics`), as opposed to the product metrics it
//! computes for users (`domain::metric`, `query`).
//!
//! Logging is initialised once by `main` (tests leave it off, or call
//! [`init_logging`] themselves); metrics live in a [`Telemetry`] value that the
//! app owns and hands to each layer, so several servers in one process keep
//! separate counts.

use std::hash::Hash;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format;

use crate::config::{LogFormat, LogSettings};

/// Installs the global `tracing` subscriber. Safe to call twice (the second
/// call does nothing), so tests may call it too.
///
/// Text logs escape control characters in every field, the message
/// included ([`escaped_fields`]): values often quote client input (an id
/// that is not a UUID, an error naming a bad field), and a newline in one
/// must not forge a log line. JSON logs are escaped by JSON itself.
pub fn init_logging(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: a log file, a pipe or
    // a container's log driver gets plain text (and `NO_COLOR` turns it off).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Text => builder.fmt_fields(escaped_fields()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The text format's fields: `message name=value …` like tracing's default,
/// with every value (and the message) passed through
/// [`escape_control`](crate::text::escape_control), whether it was recorded
/// with `%` (Display), `?` (Debug) or as a plain string.
pub fn escaped_fields() -> impl for<'writer> FormatFields<'writer> + Send + Sync + 'static {
    format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = crate::text::escape_control(&text);
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// Labels of one RPC outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/package.Service/Method`, or `unknown` for paths no service serves.
    pub method: String,
    /// The gRPC status code name, e.g. `OK`, `InvalidArgument`.
    pub code: String,
}

/// Labels of one HTTP response.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route's pattern (`/api/v1/metrics`), or `unmatched`.
    pub route: String,
    /// The HTTP status code, e.g. `200`.
    pub status: String,
}

/// Labels of an ingest outcome class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Labels of an alert state: a rule's (`inactive`, `pending`, `firing`,
/// `disabled`) or a notification's (`firing`, `resolved`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// Labels of a maintenance job run (`retention`, `vacuum`; outcome `ok`,
/// `failed`, `skipped` when another instance held the job's lock).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub job: String,
    pub outcome: String,
}

/// Labels of one maintenance job.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobNameLabels {
    pub job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: String,
}

/// Labels of a listener (`grpc`, `http`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

/// Labels of a closed connection: its listener and why it ended
/// (`ended`: by the peer or the protocol; `handshake_timeout`,
/// `idle_timeout`, `evicted` to make room, `refused` at the cap).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub listener: String,
    pub reason: String,
}

/// Labels of a connection pool (`ingest`, `query`, `background`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

/// Labels of a table rows were deleted from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

/// Every series Pulse exports, with the registry that renders them.
pub struct Telemetry {
    registry: Registry,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_duration: Family<RpcLabels, Histogram>,
    pub db_up: Gauge,
    pub ingest_events: Family<OutcomeLabels, Counter>,
    pub ingest_batch_duration: Histogram,
    pub ingest_streams_in_flight: Gauge,
    pub rollup_fold_duration: Histogram,
    pub rollup_folded_rows: Counter,
    pub rollup_fold_failures: Counter,
    pub query_cache: Family<OutcomeLabels, Counter>,
    pub alert_evaluator_leader: Gauge,
    pub alert_rules: Family<StateLabels, Gauge>,
    pub alert_evaluations: Counter,
    pub alert_evaluation_failures: Counter,
    pub alert_evaluation_duration: Histogram,
    pub alert_notifications: Family<StateLabels, Counter>,
    pub alert_notifications_delivered: Counter,
    pub alert_subscribers: Gauge,
    pub alert_subscriber_catchups: Counter,
    pub alert_subscriber_lag: Histogram,
    /// Database pool gauges by pool, set from `pool.status()` at each scrape.
    pub db_pool_max_size: Family<PoolLabels, Gauge>,
    pub db_pool_size: Family<PoolLabels, Gauge>,
    pub db_pool_available: Family<PoolLabels, Gauge>,
    pub db_pool_waiting: Family<PoolLabels, Gauge>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub job_runs: Family<JobLabels, Counter>,
    pub job_duration: Family<JobNameLabels, Histogram>,
    pub job_last_success: Family<JobNameLabels, Gauge>,
    pub retention_deleted_rows: Family<TableLabels, Counter>,
    pub replica_reads: Family<OutcomeLabels, Counter>,
    pub queries_over_budget: Counter,
    pub background_task_exits: Family<TaskLabels, Counter>,
    pub connections_open: Family<ListenerLabels, Gauge>,
    pub connections_accepted: Family<ListenerLabels, Counter>,
    pub connections_closed: Family<CloseLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// A family with one [`latency_histogram`] per label set.
fn latency_family<L: Clone + Eq + Hash>() -> Family<L, Histogram> {
    Family::new_with_constructor(latency_histogram)
}

impl Telemetry {
    /// A fresh registry with every Pulse series registered at zero.
    pub fn new() -> Arc<Self> {
        let mut telemetry = Self::unregistered();
        // `/metrics` lists series in the order they were registered: these
        // calls (and the calls inside them) keep that order stable.
        telemetry.register_ingest_and_queries();
        telemetry.register_alerts();
        telemetry.register_jobs_and_reads();
        telemetry.register_connections_and_http();
        Arc::new(telemetry)
    }

    /// Every series at zero, none of them registered yet.
    fn unregistered() -> Self {
        Self {
            registry: Registry::with_prefix("pulse"),
            rpc_requests: Family::default(),
            rpc_duration: latency_family(),
            db_up: Gauge::default(),
            ingest_events: Family::default(),
            ingest_batch_duration: latency_histogram(),
            ingest_streams_in_flight: Gauge::default(),
            rollup_fold_duration: latency_histogram(),
            rollup_folded_rows: Counter::default(),
            rollup_fold_failures: Counter::default(),
            query_cache: Family::default(),
            alert_evaluator_leader: Gauge::default(),
            alert_rules: Family::default(),
            alert_evaluations: Counter::default(),
            alert_evaluation_failures: Counter::default(),
            alert_evaluation_duration: latency_histogram(),
            alert_notifications: Family::default(),
            alert_notifications_delivered: Counter::default(),
            alert_subscribers: Gauge::default(),
            alert_subscriber_catchups: Counter::default(),
            alert_subscriber_lag: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            db_pool_max_size: Family::default(),
            db_pool_size: Family::default(),
            db_pool_available: Family::default(),
            db_pool_waiting: Family::default(),
            http_requests: Family::default(),
            http_duration: latency_family(),
            job_runs: Family::default(),
            job_duration: latency_family(),
            job_last_success: Family::default(),
            retention_deleted_rows: Family::default(),
            replica_reads: Family::default(),
            queries_over_budget: Counter::default(),
            background_task_exits: Family::default(),
            connections_open: Family::default(),
            connections_accepted: Family::default(),
            connections_closed: Family::default(),
        }
    }

    /// Registers the gRPC, database-probe, ingest, rollup and query-cache series.
    fn register_ingest_and_queries(&mut self) {
        self.registry.register(
            "grpc_requests",
            "gRPC calls finished, by method and status code",
            self.rpc_requests.clone(),
        );
        self.registry.register(
            "grpc_request_duration_seconds",
            "gRPC call duration from request to the end of the response, by method and status code",
            self.rpc_duration.clone(),
        );
        self.registry.register(
            "database_up",
            "1 while the database answers the health probe, else 0",
            self.db_up.clone(),
        );
        self.registry.register(
            "ingest_events",
            "Events received by IngestEvents, by outcome (accepted, duplicate, rejected_<reason class>)",
            self.ingest_events.clone(),
        );
        self.registry.register(
            "ingest_batch_write_duration_seconds",
            "Time to write and commit one ingest batch",
            self.ingest_batch_duration.clone(),
        );
        self.registry.register(
            "ingest_streams_in_flight",
            "IngestEvents streams currently open",
            self.ingest_streams_in_flight.clone(),
        );
        self.registry.register(
            "rollup_fold_duration_seconds",
            "Time of one fold of rollup deltas into the rollup tables",
            self.rollup_fold_duration.clone(),
        );
        self.registry.register(
            "rollup_folded_delta_rows",
            "Delta rows folded into rollups",
            self.rollup_folded_rows.clone(),
        );
        self.registry.register(
            "rollup_fold_failures",
            "Folds that failed (retried next interval)",
            self.rollup_fold_failures.clone(),
        );
        self.registry.register(
            "query_cache_lookups",
            "GetMetrics answers by use of the query cache (hit, miss, bypass)",
            self.query_cache.clone(),
        );
    }

    /// Registers the alert evaluator's and WatchAlerts' series.
    fn register_alerts(&mut self) {
        self.registry.register(
            "alert_evaluator_leader",
            "1 while this instance holds the evaluator lock and evaluates alert rules, else 0",
            self.alert_evaluator_leader.clone(),
        );
        self.registry.register(
            "alert_rules",
            "Alert rules by state (inactive, pending, firing, disabled) after the last tick; 0 on instances that do not evaluate",
            self.alert_rules.clone(),
        );
        self.registry.register(
            "alert_evaluations",
            "Rule evaluations (one per enabled rule per tick)",
            self.alert_evaluations.clone(),
        );
        self.registry.register(
            "alert_evaluation_failures",
            "Metric queries or ticks of the evaluator that failed (the affected rules keep their state)",
            self.alert_evaluation_failures.clone(),
        );
        self.registry.register(
            "alert_evaluation_duration_seconds",
            "Time of one evaluator tick: every rule evaluated and every transition stored",
            self.alert_evaluation_duration.clone(),
        );
        self.registry.register(
            "alert_notifications",
            "Notifications stored by this instance's evaluator, by state (firing, resolved)",
            self.alert_notifications.clone(),
        );
        self.registry.register(
            "alert_notifications_delivered",
            "Notifications sent to WatchAlerts subscribers of this instance (replays included)",
            self.alert_notifications_delivered.clone(),
        );
        self.registry.register(
            "alert_subscribers",
            "WatchAlerts streams open on this instance",
            self.alert_subscribers.clone(),
        );
        self.registry.register(
            "alert_subscriber_catchups",
            "Times a subscriber fell behind the live feed and was caught up from the table",
            self.alert_subscriber_catchups.clone(),
        );
        self.registry.register(
            "alert_subscriber_lag_notifications",
            "How many live notifications a subscriber had fallen behind by when it was caught up",
            self.alert_subscriber_lag.clone(),
        );
    }

    /// Registers the maintenance-job, replica-read, query-budget and
    /// background-task series.
    fn register_jobs_and_reads(&mut self) {
        self.registry.register(
            "job_runs",
            "Maintenance job runs by job (retention, vacuum) and outcome (ok, failed, skipped: another instance held the job)",
            self.job_runs.clone(),
        );
        self.registry.register(
            "job_duration_seconds",
            "Duration of maintenance job runs that did their work, by job",
            self.job_duration.clone(),
        );
        self.registry.register(
            "job_last_success_timestamp_seconds",
            "Unix time of the last successful run of each maintenance job on this instance",
            self.job_last_success.clone(),
        );
        self.registry.register(
            "retention_deleted_rows",
            "Raw rows deleted by the retention job on this instance, by table (events, pageviews, purchases)",
            self.retention_deleted_rows.clone(),
        );
        self.registry.register(
            "replica_reads",
            "GetMetrics reads by where they went: replica, or primary after the replica lagged (fallback_lag) or failed (fallback_error)",
            self.replica_reads.clone(),
        );
        self.registry.register(
            "queries_over_budget",
            "GetMetrics answers and dashboard reads cancelled past the query budget (--db-query-timeout) and refused with RESOURCE_EXHAUSTED",
            self.queries_over_budget.clone(),
        );
        self.registry.register(
            "background_task_exits",
            "Background tasks of serve that ended before shutdown (the process then stops), by task",
            self.background_task_exits.clone(),
        );
    }

    /// Registers the connection, database-pool and HTTP series.
    fn register_connections_and_http(&mut self) {
        self.registry.register(
            "connections_open",
            "Connections open now, by listener (grpc, http)",
            self.connections_open.clone(),
        );
        self.registry.register(
            "connections_accepted",
            "Connections accepted, by listener",
            self.connections_accepted.clone(),
        );
        self.registry.register(
            "connections_closed",
            "Connections closed, by listener and reason (ended, handshake_timeout, idle_timeout, evicted, refused)",
            self.connections_closed.clone(),
        );
        self.registry.register(
            "database_pool_max_connections",
            "Most connections each pool may open (ingest: --db-pool-size, query: --db-query-pool-size, background: --db-background-pool-size)",
            self.db_pool_max_size.clone(),
        );
        self.registry.register(
            "database_pool_connections",
            "Connections the pool holds open now, idle or in use",
            self.db_pool_size.clone(),
        );
        self.registry.register(
            "database_pool_idle_connections",
            "Open connections not in use now",
            self.db_pool_available.clone(),
        );
        self.registry.register(
            "database_pool_waiting_tasks",
            "Tasks waiting for a connection now (the pool is exhausted while above 0)",
            self.db_pool_waiting.clone(),
        );
        self.registry.register(
            "http_requests",
            "HTTP requests answered (dashboard, JSON API, /metrics), by route and status code",
            self.http_requests.clone(),
        );
        self.registry.register(
            "http_request_duration_seconds",
            "HTTP request duration until the response head, by route and status code",
            self.http_duration.clone(),
        );
    }

    /// Counts `n` ingest events with this outcome.
    pub fn count_ingest(&self, outcome: &str, n: u64) {
        if n > 0 {
            self.ingest_events
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.to_owned(),
                })
                .inc_by(n);
        }
    }

    /// Counts one GetMetrics answer by its use of the cache.
    pub fn count_query_cache(&self, outcome: &str) {
        self.query_cache
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records a pool's state; called at each scrape, so the gauges are
    /// as fresh as the scrape.
    pub fn observe_pool(&self, pool: &str, status: deadpool::Status) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let labels = PoolLabels {
            pool: pool.to_owned(),
        };
        self.db_pool_max_size
            .get_or_create(&labels)
            .set(gauge(status.max_size));
        self.db_pool_size
            .get_or_create(&labels)
            .set(gauge(status.size));
        self.db_pool_available
            .get_or_create(&labels)
            .set(gauge(status.available));
        self.db_pool_waiting
            .get_or_create(&labels)
            .set(gauge(status.waiting));
    }

    /// Counts one read by where it went (replica or a fallback).
    pub fn count_replica_read(&self, route: &str) {
        self.replica_reads
            .get_or_create(&OutcomeLabels {
                outcome: route.to_owned(),
            })
            .inc();
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A writer into a shared buffer, for reading back what was logged.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_logs_keep_client_values_on_one_line() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .with_writer(move || writer.clone())
            .finish();
        let forged = "x\n2026-01-01T00:00:00.000000Z  INFO pulse: forged\x1b[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(id = %forged, quoted = forged, debug = ?forged, "rpc {forged}");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains(" WARN "), "{text}");
        assert!(
            text.contains(
                "rpc x\\n2026-01-01T00:00:00.000000Z  INFO pulse: forged\\u{1b}[2J id=x\\n"
            ),
            "{text}"
        );
        assert!(text.contains("quoted=\"x\\n"), "{text}");
    }
}
