//! Fault drills (issue 7 item 4) against the real binary where a process must
//! die: SIGKILL mid-stream, SIGTERM under load, clients that vanish and
//! subscribers that never read (RSS bounded), and an exhausted connection
//! pool. PostgreSQL restarts are drilled by `scripts/faults.sh pg-restart`
//! on a private cluster (never the shared server these tests use).

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use pulse::grpc::convert::to_timestamp;
use pulse::grpc::proto::alert_service_client::AlertServiceClient;
use pulse::grpc::proto::ingest_service_client::IngestServiceClient;
use pulse::grpc::proto::query_service_client::QueryServiceClient;
use pulse::grpc::proto::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase, http_get};
use crate::ingest::{click, count, message, pageview, purchase};

/// The real `pulse serve` on port 0, on an existing database.
struct Server {
    child: Child,
    grpc_addr: String,
    http_addr: std::net::SocketAddr,
}

impl Server {
    async fn start(db: &TestDatabase) -> Self {
        Self::start_with(db, &[]).await
    }

    async fn start_with(db: &TestDatabase, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pulse"))
            .arg("serve")
            .args(extra)
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--health-interval",
                "200ms",
                "--no-migrate",
            ])
            .env("DATABASE_URL", &db.url)
            .env("PULSE_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pulse");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (grpc_addr, http_addr) = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read log") {
                let record: serde_json::Value = serde_json::from_str(&line).expect("JSON log");
                if record["message"] == "pulse serving" {
                    let field = |k: &str| record[k].as_str().expect("address").to_owned();
                    return (field("grpc_addr"), field("http_addr"));
                }
            }
            panic!("pulse exited before serving");
        })
        .await
        .expect("pulse serves within 30 s");
        // Keep draining the log so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            grpc_addr,
            http_addr: http_addr.parse().expect("http_addr"),
        }
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.grpc_addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("pulse exits within 20 s")
            .expect("wait")
    }

    /// Resident memory in kB, from /proc.
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

/// `n` messages of `per` events: clicks, pageviews and purchases in turn.
fn batches(n: usize, per: usize) -> Vec<IngestEventsRequest> {
    (0..n)
        .map(|m| {
            message(
                (0..per)
                    .map(|i| {
                        let id = Uuid::now_v7();
                        let user = format!("u{}", (m * per + i) % 97);
                        match i % 3 {
                            0 => click(id, &user),
                            1 => pageview(id, &user, &format!("/p/{}", i % 7)),
                            _ => purchase(id, &user, "sku-1", 1, "1.50"),
                        }
                    })
                    .collect(),
            )
        })
        .collect()
}

fn total(messages: &[IngestEventsRequest]) -> i64 {
    messages.iter().map(|m| m.events.len() as i64).sum()
}

/// Every event once, with its detail row.
async fn assert_rows_exact(db: &TestDatabase, messages: &[IngestEventsRequest]) {
    let events: Vec<&Event> = messages.iter().flat_map(|m| &m.events).collect();
    let of = |kind: &str| events.iter().filter(|e| e.event_type == kind).count() as i64;
    assert_eq!(count(db, "events").await, events.len() as i64, "events");
    assert_eq!(count(db, "pageviews").await, of("pageview"), "pageviews");
    assert_eq!(count(db, "purchases").await, of("purchase"), "purchases");
    let mut conn = db.connect().await;
    let distinct = scalar(
        &mut conn,
        "SELECT count(DISTINCT event_id) AS n FROM events",
    )
    .await;
    assert_eq!(distinct, events.len() as i64, "distinct event ids");
}

async fn scalar(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .await
        .expect("scalar query")
        .n
}

/// Sends `messages` as one stream, `gap` apart; returns the outcome.
fn paced_stream(
    channel: Channel,
    messages: Vec<IngestEventsRequest>,
    gap: Duration,
) -> tokio::task::JoinHandle<Result<IngestEventsResponse, tonic::Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for m in messages {
            if tx.send(m).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
    });
    tokio::spawn(async move {
        IngestServiceClient::new(channel)
            .ingest_events(ReceiverStream::new(rx))
            .await
            .map(tonic::Response::into_inner)
    })
}

async fn resend(
    channel: Channel,
    messages: Vec<IngestEventsRequest>,
) -> Result<IngestEventsResponse, tonic::Status> {
    IngestServiceClient::new(channel)
        .ingest_events(tokio_stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_then_a_resend_stores_every_event_exactly_once() {
    let db = TestDatabase::migrated().await;
    let messages = batches(40, 250);
    let mut server = Server::start(&db).await;
    let stream = paced_stream(
        server.channel().await,
        messages.clone(),
        Duration::from_millis(50),
    );
    // Kill once some batches have committed, well before the stream ends.
    wait_until("a first commit", Duration::from_secs(10), async || {
        count(&db, "events").await >= 1_000
    })
    .await;
    server.signal("-KILL");
    let exit = server.wait_exit().await;
    assert!(!exit.success(), "SIGKILL is not a clean exit: {exit:?}");
    let outcome = stream.await.expect("client task");
    let status = outcome.expect_err("the stream cannot succeed: its server was killed");
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    // A statement the killed server had sent still runs, and commits, until
    // its backend notices the client is gone: count once they all have.
    let mut watcher = db.connect().await;
    wait_until(
        "the killed server's sessions to end",
        Duration::from_secs(30),
        async || {
            scalar(
                &mut watcher,
                "SELECT count(*) AS n FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE 'pulse%'",
            )
            .await
                == 0
        },
    )
    .await;
    let committed = count(&db, "events").await;
    assert!(committed > 0 && committed < total(&messages), "{committed}");

    let server = Server::start(&db).await;
    let response = resend(server.channel().await, messages.clone())
        .await
        .expect("the resend succeeds");
    assert_eq!(response.duplicates as i64, committed);
    assert_eq!(response.accepted as i64, total(&messages) - committed);
    assert_eq!(response.rejected, 0);
    assert_rows_exact(&db, &messages).await;
    eprintln!(
        "sigkill: {} events, {committed} committed before the kill, resend accepted {} duplicates {}",
        total(&messages),
        response.accepted,
        response.duplicates
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_lets_in_flight_streams_finish_and_loses_nothing() {
    // The default 10 s grace outlasts every stream (about 1 s each).
    sigterm_under_load(&[], 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_short_grace_fails_cut_streams_cleanly_and_loses_nothing() {
    // Streams of about 3 s against a 300 ms grace: they are cut.
    sigterm_under_load(&["--shutdown-grace", "300ms"], 60).await;
}

async fn sigterm_under_load(extra: &[&str], messages_per_stream: usize) {
    let db = TestDatabase::migrated().await;
    let mut server = Server::start_with(&db, extra).await;
    let streams: Vec<Vec<IngestEventsRequest>> =
        (0..6).map(|_| batches(messages_per_stream, 200)).collect();
    let mut tasks = Vec::new();
    for messages in &streams {
        tasks.push(paced_stream(
            server.channel().await,
            messages.clone(),
            Duration::from_millis(50),
        ));
    }
    wait_until("some commits", Duration::from_secs(10), async || {
        count(&db, "events").await >= 500
    })
    .await;
    server.signal("-TERM");
    let exit = server.wait_exit().await;
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");

    let mut failed = Vec::new();
    let mut codes = Vec::new();
    let mut acknowledged = 0;
    for (task, messages) in tasks.into_iter().zip(&streams) {
        match task.await.expect("client task") {
            Ok(response) => {
                assert_eq!(
                    (response.accepted + response.duplicates) as i64,
                    total(messages)
                );
                acknowledged += response.accepted as i64;
            }
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                    ),
                    "a stream cut by shutdown fails with a retryable status: {status:?}"
                );
                codes.push(status.code());
                failed.push(messages.clone());
            }
        }
    }
    // Everything acknowledged is committed.
    let stored = count(&db, "events").await;
    assert!(stored >= acknowledged, "{stored} < {acknowledged}");

    let server = Server::start(&db).await;
    for messages in &failed {
        let response = resend(server.channel().await, messages.clone())
            .await
            .expect("resend");
        assert_eq!(
            (response.accepted + response.duplicates) as i64,
            total(messages)
        );
    }
    let all: Vec<IngestEventsRequest> = streams.concat();
    assert_rows_exact(&db, &all).await;
    eprintln!(
        "sigterm: {} streams, {} completed OK ({acknowledged} events acknowledged), {} failed ({codes:?}) and resent; {} rows",
        streams.len(),
        streams.len() - failed.len(),
        failed.len(),
        total(&all)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn vanishing_clients_and_subscribers_that_never_read_keep_memory_bounded() {
    let db = TestDatabase::migrated().await;
    let server = Server::start(&db).await;
    let channels = futures::future::join_all((0..4).map(|_| server.channel())).await;
    // Warm up: one ordinary stream.
    resend(channels[0].clone(), batches(4, 250))
        .await
        .expect("warm-up ingest");
    let rss_before = server.rss_kb();

    // Subscribers that never read.
    let mut subscribers = Vec::new();
    for i in 0..200 {
        let watch = AlertServiceClient::new(channels[i % 4].clone())
            .watch_alerts(WatchAlertsRequest {
                rule_ids: vec![],
                after_id: 0,
            })
            .await
            .expect("WatchAlerts opens");
        subscribers.push(watch);
    }
    // Clients that vanish mid-stream: a message sent, then the call dropped
    // (RST_STREAM) with the stream still open; three rounds.
    for _ in 0..3 {
        let mut vanishing = Vec::new();
        for i in 0..100 {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(batches(1, 200).remove(0)).await.expect("queued");
            let channel = channels[i % 4].clone();
            vanishing.push((
                tx,
                tokio::spawn(async move {
                    IngestServiceClient::new(channel)
                        .ingest_events(ReceiverStream::new(rx))
                        .await
                }),
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (tx, task) in vanishing {
            task.abort();
            drop(tx);
        }
    }
    // A whole TCP connection that vanishes with streams open.
    {
        let doomed = server.channel().await;
        let mut held = Vec::new();
        for _ in 0..50 {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(batches(1, 100).remove(0)).await.expect("queued");
            let channel = doomed.clone();
            held.push((
                tx,
                tokio::spawn(async move {
                    IngestServiceClient::new(channel)
                        .ingest_events(ReceiverStream::new(rx))
                        .await
                }),
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (_, task) in &held {
            task.abort();
        }
    }
    // Meanwhile the server still ingests, answers health, and its memory stays bounded.
    let messages = batches(20, 500);
    let response = resend(channels[1].clone(), messages.clone())
        .await
        .expect("ingest still works");
    assert_eq!(response.accepted as i64, total(&messages));
    let health = tonic_health::pb::health_client::HealthClient::new(channels[2].clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let rss_loaded = server.rss_kb();
    drop(subscribers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, metrics) = http_get(server.http_addr, "/metrics").await;
    let gauge = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or_else(|| panic!("{name} in /metrics"), |v| v.trim().to_owned())
    };
    let in_flight = gauge("pulse_ingest_streams_in_flight");
    let subscribers_left = gauge("pulse_alert_subscribers");
    let rss_after = server.rss_kb();
    eprintln!(
        "vanishing: VmRSS before {rss_before} kB, with 200 unread subscribers after 350 vanished streams {rss_loaded} kB, after dropping them {rss_after} kB; streams in flight {in_flight}"
    );
    assert!(rss_loaded < 150 * 1024, "RSS {rss_loaded} kB");
    assert!(rss_after < 150 * 1024, "RSS {rss_after} kB");
    assert_eq!(in_flight, "0", "every vanished stream was cleaned up");
    assert_eq!(
        subscribers_left, "0",
        "every dropped subscriber was cleaned up"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_pool_fails_new_calls_with_unavailable_within_the_timeout() {
    let app = TestApp::spawn_with(|s| {
        s.database.pool_size = 2;
        s.database.pool_timeout = Duration::from_millis(500);
    })
    .await;
    // Lock `events` so that ingest writes wait while holding their pool connections.
    let mut locker = app.db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock events");
    let messages: Vec<Vec<IngestEventsRequest>> = (0..2).map(|_| batches(1, 10)).collect();
    let blocked: Vec<_> = messages
        .iter()
        .map(|m| {
            let channel = app.channel.clone();
            let m = m.clone();
            tokio::spawn(async move { resend(channel, m).await })
        })
        .collect();
    let mut watcher = app.db.connect().await;
    let db_name = app.db.name.clone();
    wait_until("two writers on the lock", Duration::from_secs(10), async || {
        scalar(
            &mut watcher,
            &format!(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '{db_name}' AND wait_event_type = 'Lock'"
            ),
        )
        .await
            >= 2
    })
    .await;

    // A third ingest call finds the ingest pool exhausted.
    let started = Instant::now();
    let status = resend(app.channel.clone(), batches(1, 10))
        .await
        .expect_err("no ingest connection is free");
    let waited = started.elapsed();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "failed after {waited:?}"
    );
    // Queries have their own pool: they are not starved by ingest.
    AlertServiceClient::new(app.channel.clone())
        .list_alert_rules(ListAlertRulesRequest::default())
        .await
        .expect("the query pool is not the ingest pool");
    // Health probes on a connection of their own: the database is not down.
    let health = app
        .health()
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    locker.batch_execute("ROLLBACK").await.expect("unlock");
    for (task, m) in blocked.into_iter().zip(&messages) {
        let response = task
            .await
            .expect("task")
            .expect("the blocked ingest completes");
        assert_eq!(response.accepted as i64, total(m));
    }
    let now = Utc::now();
    let request = GetMetricsRequest {
        metric: Metric::Events as i32,
        start: Some(to_timestamp(now - TimeDelta::hours(1))),
        end: Some(to_timestamp(now)),
        granularity: Granularity::Total as i32,
        filter: None,
        group_by: Dimension::Unspecified as i32,
        limit: 0,
    };
    QueryServiceClient::new(app.channel.clone())
        .get_metrics(request)
        .await
        .expect("GetMetrics works once the lock is gone");
    let after = batches(1, 10);
    resend(app.channel.clone(), after.clone())
        .await
        .expect("ingest works again once connections are free");
    assert_rows_exact(&app.db, &[messages.concat(), after].concat()).await;
    eprintln!("pool: IngestEvents failed with UNAVAILABLE after {waited:?} (pool timeout 500 ms)");
}
