//! `pulse bench-queries`: GetMetrics latency for the dashboard's queries,
//! side by side with the same question asked of the raw tables in SQL.
//!
//! A program that prints numbers, never a test that asserts a time. Each
//! query is sent `--calls` times in a row with `end = now` at the moment of
//! the call (as a polling dashboard would), and its p50/p99 are printed
//! beside the median of `--sql-calls` runs of the equivalent plain SQL.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use clap::Args;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::error::{Error, Result};
use crate::grpc::convert::to_timestamp;
use crate::grpc::proto::query_service_client::QueryServiceClient;
use crate::grpc::proto::{Dimension, GetMetricsRequest, Granularity, Metric};

/// Settings of `pulse bench-queries`.
#[derive(Debug, Clone, Args)]
pub struct BenchQueriesSettings {
    /// The Pulse server to query.
    #[arg(long = "grpc-addr", default_value = "http://127.0.0.1:50051")]
    pub grpc_addr: String,

    /// The database behind it, for the plain-SQL baseline.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/pulse"
    )]
    pub database_url: String,

    /// GetMetrics calls per query.
    #[arg(long, default_value_t = 200)]
    pub calls: usize,

    /// Runs of each plain-SQL query (they take far longer).
    #[arg(long = "sql-calls", default_value_t = 5)]
    pub sql_calls: usize,

    /// Skip the plain-SQL baseline.
    #[arg(long = "no-sql")]
    pub no_sql: bool,
}

struct Case {
    name: &'static str,
    metric: Metric,
    range: TimeDelta,
    granularity: Granularity,
    group_by: Dimension,
    sql: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "events/min by type, 24 h",
            metric: Metric::Events,
            range: TimeDelta::hours(24),
            granularity: Granularity::Minute,
            group_by: Dimension::EventType,
            sql: r#"SELECT date_trunc('minute', e."timestamp"), t.name, count(*) FROM events e
                    JOIN event_types t USING (event_type_id)
                    WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1, 2"#,
        },
        Case {
            name: "unique users/hour, 7 d",
            metric: Metric::UniqueUsers,
            range: TimeDelta::days(7),
            granularity: Granularity::Hour,
            group_by: Dimension::Unspecified,
            sql: r#"SELECT date_trunc('hour', "timestamp"), count(DISTINCT user_id) FROM events
                    WHERE "timestamp" >= $1 AND "timestamp" < $2 AND user_id IS NOT NULL GROUP BY 1"#,
        },
        Case {
            name: "top 10 pages, 24 h",
            metric: Metric::Pageviews,
            range: TimeDelta::hours(24),
            granularity: Granularity::Total,
            group_by: Dimension::PageUrl,
            sql: r#"SELECT p.page_url, count(*) FROM pageviews p JOIN events e USING (event_id)
                    WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1 ORDER BY 2 DESC LIMIT 10"#,
        },
        Case {
            name: "revenue/hour, 7 d",
            metric: Metric::Revenue,
            range: TimeDelta::days(7),
            granularity: Granularity::Hour,
            group_by: Dimension::Unspecified,
            sql: r#"SELECT date_trunc('hour', e."timestamp"), sum(p.amount) FROM purchases p JOIN events e USING (event_id)
                    WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1"#,
        },
        Case {
            name: "top 10 products by revenue, 7 d",
            metric: Metric::Revenue,
            range: TimeDelta::days(7),
            granularity: Granularity::Total,
            group_by: Dimension::ProductId,
            sql: r#"SELECT p.product_id, sum(p.amount) FROM purchases p JOIN events e USING (event_id)
                    WHERE e."timestamp" >= $1 AND e."timestamp" < $2 GROUP BY 1 ORDER BY 2 DESC LIMIT 10"#,
        },
        Case {
            name: "purchases, last 5 min",
            metric: Metric::Purchases,
            range: TimeDelta::minutes(5),
            granularity: Granularity::Total,
            group_by: Dimension::Unspecified,
            sql: r#"SELECT count(*) FROM purchases p JOIN events e USING (event_id)
                    WHERE e."timestamp" >= $1 AND e."timestamp" < $2"#,
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

/// Runs the benchmark and prints one row per query.
pub async fn run(settings: BenchQueriesSettings) -> Result<()> {
    let mut client = QueryServiceClient::connect(settings.grpc_addr.clone())
        .await
        .map_err(|e| Error::Unavailable(format!("cannot reach {}: {e}", settings.grpc_addr)))?;
    let mut conn = if settings.no_sql {
        None
    } else {
        Some(
            AsyncPgConnection::establish(&settings.database_url)
                .await
                .map_err(|e| crate::db::cannot_connect(&settings.database_url, e))?,
        )
    };
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8}",
        "query", "first ms", "p50 ms", "p99 ms", "max ms", "plain SQL ms", "SQL/p50"
    );
    for case in cases() {
        let mut times = Vec::with_capacity(settings.calls);
        let mut first = f64::NAN;
        for i in 0..settings.calls {
            let end = Utc::now();
            let request = GetMetricsRequest {
                metric: case.metric as i32,
                start: Some(to_timestamp(end - case.range)),
                end: Some(to_timestamp(end)),
                granularity: case.granularity as i32,
                filter: None,
                group_by: case.group_by as i32,
                limit: 10,
            };
            let started = Instant::now();
            client
                .get_metrics(request)
                .await
                .map_err(|s| Error::Internal(format!("{}: {s}", case.name)))?;
            let elapsed = started.elapsed();
            if i == 0 {
                first = elapsed.as_secs_f64() * 1000.0;
            }
            times.push(elapsed);
        }
        times.sort();
        let sql_ms = match conn.as_mut() {
            None => f64::NAN,
            Some(conn) => {
                let mut sql_times = Vec::new();
                for _ in 0..settings.sql_calls.max(1) {
                    let end = Utc::now();
                    let started = Instant::now();
                    diesel::sql_query(case.sql)
                        .bind::<diesel::sql_types::Timestamptz, _>(end - case.range)
                        .bind::<diesel::sql_types::Timestamptz, _>(end)
                        .execute(conn)
                        .await?;
                    sql_times.push(started.elapsed());
                }
                sql_times.sort();
                sql_times[sql_times.len() / 2].as_secs_f64() * 1000.0
            }
        };
        let p50 = percentile(&times, 50.0);
        println!(
            "{:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>12.1} {:>7.0}x",
            case.name,
            first,
            p50,
            percentile(&times, 99.0),
            percentile(&times, 100.0),
            sql_ms,
            sql_ms / p50
        );
    }
    Ok(())
}
