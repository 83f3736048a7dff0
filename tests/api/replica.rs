//! Reads from a real PostgreSQL streaming replica (`scripts/replica.sh`):
//! GetMetrics through the replica returns what was just acknowledged.
//!
//! The replica applies every commit 300 ms late (`recovery_min_apply_delay`),
//! so an answer that includes the events just acknowledged proves the read
//! waited for them, and a short wait proves the fallback to the primary.
//!
//! The script clones the test server if its pg_hba.conf allows replication
//! from 127.0.0.1; otherwise (it never edits the server's configuration) it
//! starts a private primary and a replica of that. Either way the clusters
//! are stopped and their directory removed when the test ends, pass or fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use pulse::grpc::convert::to_timestamp;
use pulse::grpc::proto::*;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase};
use crate::ingest::{click, ingest, message, purchase};

/// How far the replica lags behind on purpose: a read that did not wait for
/// its writes to replay would miss them.
const APPLY_DELAY: Duration = Duration::from_millis(300);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/replica.sh")
}

/// The clusters the script started; stopped and removed on drop, so also
/// when the test panics.
struct Clusters {
    port: u16,
    dir: PathBuf,
}

impl Clusters {
    fn run(&self, command: &str) -> std::process::Output {
        Command::new(script())
            .env(
                "REPLICA_APPLY_DELAY",
                format!("{}ms", APPLY_DELAY.as_millis()),
            )
            .args([command, &self.port.to_string(), &self.dir.to_string_lossy()])
            .output()
            .expect("scripts/replica.sh runs")
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        let _ = self.run("stop");
    }
}

/// Two consecutive free ports (the private primary and its replica).
fn free_ports() -> u16 {
    for _ in 0..100 {
        let port = rand::random_range(20_000u16..60_000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 1) {
            return port;
        }
    }
    panic!("no two free consecutive ports");
}

/// Another handle on the same database for a second server (dropping it
/// drops nothing; see tests/api/alerts.rs).
fn alias(db: &TestDatabase) -> TestDatabase {
    TestDatabase {
        name: format!("{}_alias", db.name),
        url: db.url.clone(),
    }
}

fn url_line(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in the script's output: {stdout}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn get_metrics_through_a_streaming_replica_reads_its_own_writes() {
    // The script runs PostgreSQL's binaries as the `postgres` OS user
    // (`runuser -u postgres` when root): anyone else cannot start a cluster.
    let user = Command::new("id").arg("-un").output().expect("id runs");
    let user = String::from_utf8_lossy(&user.stdout).trim().to_owned();
    assert!(
        user == "root" || user == "postgres",
        "the replica test starts PostgreSQL clusters as the postgres OS user, which needs root \
         (runuser -u postgres) or running as postgres; it runs as `{user}`: run the tests as root"
    );
    crate::helpers::require(
        "PostgreSQL 15's server binaries (/usr/lib/postgresql/15/bin/initdb)",
        Command::new("/usr/lib/postgresql/15/bin/initdb").arg("--version"),
    );
    let clusters = Clusters {
        port: free_ports(),
        dir: std::env::temp_dir().join(format!("pulse-replica-{}", Uuid::new_v4().simple())),
    };
    // The test server first, if it allows replication; else a private pair.
    let db = TestDatabase::migrated().await;
    let mut out = clusters.run("start");
    let shared = out.status.success();
    if out.status.code() == Some(3) {
        out = clusters.run("start-with-primary");
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/replica.sh failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // On a private primary, Pulse creates and migrates its database itself.
    let (db, name) = if shared {
        let name = db.name.clone();
        (db, name)
    } else {
        let name = "pulse".to_owned();
        let private = TestDatabase {
            name: format!("{}_private", db.name),
            url: format!("{}/{name}", url_line(&stdout, "PRIMARY_URL")),
        };
        (private, name)
    };
    let replica_url = format!("{}/{name}", url_line(&stdout, "REPLICA_URL"));

    let app = TestApp::spawn_on(db, |s| {
        s.read_database_url = Some(replica_url.clone());
        // Generous on a busy machine: the point is to read the replica.
        s.replica_wait = Duration::from_secs(10);
    })
    .await;
    // The database (created on the primary by the app) reaches the replica.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while AsyncPgConnection::establish(&replica_url).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never has the database"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut acknowledged = 0.0;
    for round in 1..=5 {
        let events = vec![
            click(Uuid::now_v7(), "ann"),
            purchase(Uuid::now_v7(), "bob", "sku-1", round, "1.25"),
        ];
        let response = ingest(&app, vec![message(events)]).await.expect("ingest");
        assert_eq!(response.accepted, 2);
        acknowledged += 2.0;
        // At once, no sleep: the read waits for the replica to replay.
        let now = Utc::now();
        let answer = app
            .query()
            .get_metrics(GetMetricsRequest {
                metric: Metric::Events as i32,
                start: Some(to_timestamp(now - TimeDelta::hours(1))),
                end: Some(to_timestamp(now + TimeDelta::hours(1))),
                granularity: Granularity::Total as i32,
                filter: None,
                group_by: Dimension::Unspecified as i32,
                limit: 0,
            })
            .await
            .expect("GetMetrics")
            .into_inner();
        assert_eq!(answer.series[0].total, acknowledged, "round {round}");
    }
    let (_, body) = app.http_get("/metrics").await;
    assert!(
        body.lines()
            .any(|l| l == r#"pulse_replica_reads_total{outcome="replica"} 5"#),
        "every read went to the replica:\n{body}"
    );

    // An instance that may not wait that long reads the primary instead,
    // and is just as fresh.
    let impatient = TestApp::spawn_on(alias(&app.db), |s| {
        s.read_database_url = Some(replica_url.clone());
        s.replica_wait = Duration::from_millis(20);
    })
    .await;
    let response = ingest(&impatient, vec![message(vec![click(Uuid::now_v7(), "cy")])])
        .await
        .expect("ingest");
    assert_eq!(response.accepted, 1);
    let now = Utc::now();
    let answer = impatient
        .query()
        .get_metrics(GetMetricsRequest {
            metric: Metric::Events as i32,
            start: Some(to_timestamp(now - TimeDelta::hours(1))),
            end: Some(to_timestamp(now + TimeDelta::hours(1))),
            granularity: Granularity::Total as i32,
            filter: None,
            group_by: Dimension::Unspecified as i32,
            limit: 0,
        })
        .await
        .expect("GetMetrics")
        .into_inner();
    assert_eq!(answer.series[0].total, acknowledged + 1.0);
    let (_, body) = impatient.http_get("/metrics").await;
    assert!(
        body.lines()
            .any(|l| l == r#"pulse_replica_reads_total{outcome="fallback_lag"} 1"#),
        "the lagging replica was skipped:\n{body}"
    );
    impatient.shutdown().await.expect("clean shutdown");
    app.shutdown().await.expect("clean shutdown");
    drop(clusters);
}
