//! `pulse bench-queries`: GetMetrics latency of the dashboard's queries,
//! repeated and shifted, side by side with a baseline server (e.g. an older
//! build on a copy of the same data) and the same question in plain SQL.
//!
//! A program that prints numbers, never a test that asserts a time. For each
//! query shape:
//!
//! * **repeated**: the same request (`end` = now at the start of the run,
//!   not minute-aligned) `--calls` times: what a polling dashboard costs;
//! * **shifted**: the window moved back 61 s per call, `--calls` times, so
//!   no answer is ever whole in a cache;
//!
//! each against the server and, with `--baseline-addr`, the baseline, one
//! after the other so both meet the same machine load. With `--pid`
//! (`--baseline-pid`) the server's resident memory after each shape and its
//! peak (`VmHWM`) are printed. The plain-SQL column is the median of
//! `--sql-calls` runs of a straightforward query over the raw tables.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::grpc::convert::to_timestamp;
use crate::grpc::proto::query_service_client::QueryServiceClient;
use crate::grpc::proto::{Dimension, Filter, GetMetricsRequest, Granularity, Metric};

/// Settings of `pulse bench-queries`.
#[derive(Debug, Clone, Args)]
pub struct BenchQueriesSettings {
    /// The Pulse server to query.
    #[arg(long = "grpc-addr", default_value = "http://127.0.0.1:50051")]
    pub grpc_addr: String,

    /// A second server asked the same questions, printed beside the first
    /// (e.g. the previous build on a copy of the same database).
    #[arg(long = "baseline-addr")]
    pub baseline_addr: Option<String>,

    /// Process id of the server, to report its resident memory.
    #[arg(long)]
    pub pid: Option<u32>,

    /// Process id of the baseline server.
    #[arg(long = "baseline-pid")]
    pub baseline_pid: Option<u32>,

    /// The database behind the server, for the plain-SQL column.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/pulse"
    )]
    pub database_url: String,

    /// GetMetrics calls per shape and mode.
    #[arg(long, default_value_t = 100)]
    pub calls: usize,

    /// Calls per shape and mode against the baseline (default: `--calls`;
    /// fewer when the baseline takes seconds per call).
    #[arg(long = "baseline-calls")]
    pub baseline_calls: Option<usize>,

    /// Runs of each plain-SQL query (they take far longer).
    #[arg(long = "sql-calls", default_value_t = 3)]
    pub sql_calls: usize,

    /// Skip the plain-SQL column.
    #[arg(long = "no-sql")]
    pub no_sql: bool,

    /// Only the shapes whose name contains this text.
    #[arg(long)]
    pub only: Option<String>,
}

struct Case {
    name: &'static str,
    metric: Metric,
    range: TimeDelta,
    granularity: Granularity,
    group_by: Dimension,
    filter: Option<Filter>,
    sql: &'static str,
}

impl Case {
    /// A shape over the whole of its time range (no filter).
    fn new(
        name: &'static str,
        metric: Metric,
        range: TimeDelta,
        granularity: Granularity,
        group_by: Dimension,
        sql: &'static str,
    ) -> Self {
        Case {
            name,
            metric,
            range,
            granularity,
            group_by,
            filter: None,
            sql,
        }
    }
}

/// Every query shape, in the order of the printed rows.
fn cases() -> Vec<Case> {
    let mut cases = overview_cases();
    cases.extend(detail_cases());
    cases
}

/// The first rows: counts and sums over a day or a week, per minute, hour
/// or in total.
fn overview_cases() -> Vec<Case> {
    vec![
        Case::new(
            "events/min by type, 24 h",
            Metric::Events,
            TimeDelta::hours(24),
            Granularity::Minute,
            Dimension::EventType,
            r#"SELECT date_trunc('minute', e."timestamp"), t.name, count(*) FROM events e
               JOIN event_types t USING (event_type_id)
               WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1, 2"#,
        ),
        Case::new(
            "unique users/hour, 7 d",
            Metric::UniqueUsers,
            TimeDelta::days(7),
            Granularity::Hour,
            Dimension::Unspecified,
            r#"SELECT date_trunc('hour', "timestamp"), count(DISTINCT user_id) FROM events
               WHERE "timestamp" >= $1 AND "timestamp" < $2 AND user_id IS NOT NULL GROUP BY 1"#,
        ),
        Case::new(
            "top 10 pages, 24 h",
            Metric::Pageviews,
            TimeDelta::hours(24),
            Granularity::Total,
            Dimension::PageUrl,
            r#"SELECT p.page_url, count(*) FROM pageviews p JOIN events e USING (event_id)
               WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1 ORDER BY 2 DESC LIMIT 10"#,
        ),
        Case::new(
            "revenue/hour, 7 d",
            Metric::Revenue,
            TimeDelta::days(7),
            Granularity::Hour,
            Dimension::Unspecified,
            r#"SELECT date_trunc('hour', e."timestamp"), sum(p.amount) FROM purchases p JOIN events e USING (event_id)
               WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1"#,
        ),
        Case::new(
            "top 10 products by revenue, 7 d",
            Metric::Revenue,
            TimeDelta::days(7),
            Granularity::Total,
            Dimension::ProductId,
            r#"SELECT p.product_id, sum(p.amount) FROM purchases p JOIN events e USING (event_id)
               WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1 ORDER BY 2 DESC LIMIT 10"#,
        ),
    ]
}

/// The last rows: a five-minute window, and unique users per page, with and
/// without a page filter.
fn detail_cases() -> Vec<Case> {
    vec![
        Case::new(
            "purchases, last 5 min",
            Metric::Purchases,
            TimeDelta::minutes(5),
            Granularity::Total,
            Dimension::Unspecified,
            r#"SELECT count(*) FROM purchases p JOIN events e USING (event_id)
               WHERE e."timestamp" >= $1 AND e."timestamp" < $2"#,
        ),
        Case::new(
            "visitors per page, top 10, 24 h",
            Metric::UniqueUsers,
            TimeDelta::hours(24),
            Granularity::Total,
            Dimension::PageUrl,
            r#"SELECT p.page_url, count(DISTINCT p.user_id) FROM pageviews p JOIN events e USING (event_id)
               WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1 ORDER BY 2 DESC LIMIT 10"#,
        ),
        Case::new(
            "unique users by page per day, 6 d",
            Metric::UniqueUsers,
            TimeDelta::days(6),
            Granularity::Day,
            Dimension::PageUrl,
            r#"SELECT date_trunc('day', e."timestamp"), p.page_url, count(DISTINCT p.user_id)
               FROM pageviews p JOIN events e USING (event_id)
               WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1, 2"#,
        ),
        Case {
            filter: Some(Filter {
                page_url: "/".into(),
                ..Filter::default()
            }),
            ..Case::new(
                "unique users of page /, per day, 6 d",
                Metric::UniqueUsers,
                TimeDelta::days(6),
                Granularity::Day,
                Dimension::Unspecified,
                r#"SELECT date_trunc('day', e."timestamp"), count(DISTINCT p.user_id)
                   FROM pageviews p JOIN events e USING (event_id)
                   WHERE e."timestamp" >= $1 AND e."timestamp" < $2 AND p.page_url = '/' GROUP BY 1"#,
            )
        },
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn memory(pid: Option<u32>) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn request(case: &Case, end: DateTime<Utc>) -> GetMetricsRequest {
    GetMetricsRequest {
        metric: case.metric as i32,
        start: Some(to_timestamp(end - case.range)),
        end: Some(to_timestamp(end)),
        granularity: case.granularity as i32,
        filter: case.filter.clone(),
        group_by: case.group_by as i32,
        limit: 10,
    }
}

/// (repeated p50, p99, shifted p50, p99) in ms.
async fn measure(
    client: &mut QueryServiceClient<Channel>,
    case: &Case,
    calls: usize,
    end: DateTime<Utc>,
) -> Result<[f64; 4]> {
    let mut out = [0.0; 4];
    for (mode, shift) in [(0, TimeDelta::zero()), (2, TimeDelta::seconds(61))] {
        let mut times = Vec::with_capacity(calls);
        for i in 0..calls {
            let request = request(case, end - shift * i as i32);
            let started = Instant::now();
            client
                .get_metrics(request)
                .await
                .map_err(|s| Error::internal(case.name, s))?;
            times.push(started.elapsed());
        }
        times.sort();
        out[mode] = percentile(&times, 50.0);
        out[mode + 1] = percentile(&times, 99.0);
    }
    Ok(out)
}

async fn connect(addr: &str) -> Result<QueryServiceClient<Channel>> {
    QueryServiceClient::connect(addr.to_owned())
        .await
        .map_err(|e| Error::unavailable(format!("cannot reach {addr}"), e))
}

fn mem_text(m: Option<(f64, f64)>) -> String {
    m.map_or_else(String::new, |(rss, hwm)| format!("{rss:.0}/{hwm:.0}"))
}

/// What a run measures: the server, the baseline, and the database for
/// the plain-SQL column.
struct Targets {
    client: QueryServiceClient<Channel>,
    baseline: Option<QueryServiceClient<Channel>>,
    /// `None` under `--no-sql`.
    conn: Option<AsyncPgConnection>,
}

impl Targets {
    /// Connects to the server, then the baseline, then PostgreSQL.
    async fn connect(settings: &BenchQueriesSettings) -> Result<Self> {
        let client = connect(&settings.grpc_addr).await?;
        let baseline = match &settings.baseline_addr {
            Some(addr) => Some(connect(addr).await?),
            None => None,
        };
        let conn = if settings.no_sql {
            None
        } else {
            Some(
                AsyncPgConnection::establish(&settings.database_url)
                    .await
                    .map_err(|e| Error::unavailable("cannot connect to PostgreSQL", e))?,
            )
        };
        Ok(Self {
            client,
            baseline,
            conn,
        })
    }

    /// Measures one shape on the server, then the baseline, then in plain
    /// SQL, and prints its row.
    async fn bench(
        &mut self,
        settings: &BenchQueriesSettings,
        case: &Case,
        end: DateTime<Utc>,
    ) -> Result<()> {
        let ours = measure(&mut self.client, case, settings.calls, end).await?;
        let ours_mem = memory(settings.pid);
        let theirs = match self.baseline.as_mut() {
            Some(b) => Some(
                measure(
                    b,
                    case,
                    settings.baseline_calls.unwrap_or(settings.calls),
                    end,
                )
                .await?,
            ),
            None => None,
        };
        let theirs_mem = memory(settings.baseline_pid);
        let sql_ms = match self.conn.as_mut() {
            None => f64::NAN,
            Some(conn) => plain_sql_ms(conn, case, settings.sql_calls, end).await?,
        };
        let t = theirs.unwrap_or([f64::NAN; 4]);
        println!(
            "{:<38} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9} | {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9} | {:>9.1}",
            case.name,
            ours[0],
            ours[1],
            ours[2],
            ours[3],
            mem_text(ours_mem),
            t[0],
            t[1],
            t[2],
            t[3],
            mem_text(theirs_mem),
            sql_ms
        );
        Ok(())
    }
}

/// The median time in ms of `calls` (at least one) runs of `case`'s plain SQL.
async fn plain_sql_ms(
    conn: &mut AsyncPgConnection,
    case: &Case,
    calls: usize,
    end: DateTime<Utc>,
) -> Result<f64> {
    let mut sql_times = Vec::new();
    for _ in 0..calls.max(1) {
        let started = Instant::now();
        diesel::sql_query(case.sql)
            .bind::<diesel::sql_types::Timestamptz, _>(end - case.range)
            .bind::<diesel::sql_types::Timestamptz, _>(end)
            .execute(conn)
            .await?;
        sql_times.push(started.elapsed());
    }
    sql_times.sort();
    Ok(sql_times[sql_times.len() / 2].as_secs_f64() * 1000.0)
}

/// The legend and the column headings.
fn print_header(calls: usize) {
    println!(
        "{calls} calls per mode; repeated = same request, shifted = window moved back 61 s per call; ms; memory = RSS/peak MiB"
    );
    println!(
        "{:<38} {:>8} {:>8} {:>8} {:>8} {:>9} | {:>8} {:>8} {:>8} {:>8} {:>9} | {:>9}",
        "query",
        "rep p50",
        "rep p99",
        "shf p50",
        "shf p99",
        "memory",
        "base rep",
        "p99",
        "base shf",
        "p99",
        "memory",
        "plain SQL"
    );
}

/// Runs the benchmark and prints one row per query shape.
pub async fn run(settings: BenchQueriesSettings) -> Result<()> {
    let mut targets = Targets::connect(&settings).await?;
    print_header(settings.calls);
    let end = Utc::now();
    for case in cases() {
        if settings
            .only
            .as_deref()
            .is_some_and(|o| !case.name.contains(o))
        {
            continue;
        }
        targets.bench(&settings, &case, end).await?;
    }
    Ok(())
}
