//! The foundation: health, reflection, schema, migrations, shutdown.

use std::process::Stdio;
use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{TestApp, TestDatabase, admin_connection, grpcurl};

/// Waits (bounded) until the health service reports `wanted` for `service`.
async fn wait_for_health(app: &TestApp, service: &str, wanted: ServingStatus) {
    let mut stream = app
        .health()
        .watch(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("Health/Watch")
        .into_inner();
    let reached = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(update)) = stream.next().await {
            if update.status == wanted as i32 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        reached,
        Ok(true),
        "health of `{service}` never became {wanted:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_once_the_database_answers() {
    let app = TestApp::spawn().await;
    for service in [
        "",
        "pulse.v1.IngestService",
        "pulse.v1.QueryService",
        "pulse.v1.AlertService",
    ] {
        wait_for_health(&app, service, ServingStatus::Serving).await;
    }
    let unknown = app
        .health()
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("an unknown service is NOT_FOUND");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_database_down_and_back_up() {
    let app = TestApp::spawn().await;
    wait_for_health(&app, "", ServingStatus::Serving).await;

    // Make the database unreachable: refuse new connections, cut the open ones.
    let mut admin = admin_connection().await;
    let name = &app.db.name;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        ))
        .await
        .expect("cut the database off");
    wait_for_health(&app, "", ServingStatus::NotServing).await;
    wait_for_health(&app, "pulse.v1.IngestService", ServingStatus::NotServing).await;

    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .expect("let the database back");
    wait_for_health(&app, "", ServingStatus::Serving).await;
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = TestApp::spawn().await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for wanted in [
        "pulse.v1.IngestService",
        "pulse.v1.QueryService",
        "pulse.v1.AlertService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }

    // The real grpcurl speaks v1alpha only.
    let addr = app.grpc_addr.to_string();
    let list = run_grpcurl(&["-plaintext", &addr, "list"]).await;
    for wanted in [
        "pulse.v1.IngestService",
        "pulse.v1.QueryService",
        "pulse.v1.AlertService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.lines().any(|l| l == wanted),
            "grpcurl list lacks {wanted}:\n{list}"
        );
    }
    let ingest = run_grpcurl(&["-plaintext", &addr, "describe", "pulse.v1.IngestService"]).await;
    assert!(
        ingest.contains("rpc IngestEvents ( stream .pulse.v1.IngestEventsRequest ) returns ( .pulse.v1.IngestEventsResponse )"),
        "IngestEvents is not a client stream:\n{ingest}"
    );
    let alerts = run_grpcurl(&["-plaintext", &addr, "describe", "pulse.v1.AlertService"]).await;
    assert!(
        alerts.contains("rpc WatchAlerts ( .pulse.v1.WatchAlertsRequest ) returns ( stream .pulse.v1.AlertNotification )"),
        "WatchAlerts is not a server stream:\n{alerts}"
    );
    let health = run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]).await;
    assert!(
        health.contains("SERVING") || health.contains("NOT_SERVING"),
        "{health}"
    );
}

pub async fn run_grpcurl(args: &[&str]) -> String {
    let output = tokio::process::Command::new(grpcurl())
        .args(args)
        .output()
        .await
        .expect("grpcurl runs");
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The schema as `pg_dump` prints it, minus the lines that name the dump.
async fn schema_dump(url: &str) -> String {
    crate::helpers::require(
        "pg_dump",
        std::process::Command::new("pg_dump").arg("--version"),
    );
    let output = tokio::process::Command::new("pg_dump")
        .args([
            "--schema-only",
            "--no-owner",
            "--exclude-table=__diesel_schema_migrations",
            url,
        ])
        .output()
        .await
        .expect("pg_dump runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .filter(|l| {
            !l.starts_with("-- Dumped")
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_run_revert_all_run_leave_an_identical_schema() {
    let db = TestDatabase::empty().await;
    let applied = pulse::db::migrations::run_pending(&db.url)
        .await
        .expect("run");
    assert!(!applied.is_empty());
    let first = schema_dump(&db.url).await;
    assert!(first.contains("CREATE TABLE public.events"), "{first}");

    let reverted = pulse::db::migrations::revert(&db.url, true)
        .await
        .expect("revert all");
    assert_eq!(reverted.len(), applied.len());
    let empty = schema_dump(&db.url).await;
    assert!(
        !empty.contains("CREATE TABLE public.events"),
        "revert left tables:\n{empty}"
    );

    pulse::db::migrations::run_pending(&db.url)
        .await
        .expect("run again");
    assert_eq!(schema_dump(&db.url).await, first);
    let status = pulse::db::migrations::status(&db.url)
        .await
        .expect("status");
    assert!(status.iter().all(|m| m.applied));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_foreign_key_rejects_an_orphan_row() {
    let db = TestDatabase::migrated().await;
    let mut conn = db.connect().await;
    // The five foreign keys of the data model (plus the event type lookup).
    let fks: Vec<(String, String)> = {
        use diesel::sql_types::Text;
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Fk {
            #[diesel(sql_type = Text)]
            tbl: String,
            #[diesel(sql_type = Text)]
            def: String,
        }
        diesel::sql_query(
            "SELECT conrelid::regclass::text AS tbl, pg_get_constraintdef(oid) AS def
             FROM pg_constraint WHERE contype = 'f' ORDER BY 1, 2",
        )
        .load::<Fk>(&mut conn)
        .await
        .expect("catalog")
        .into_iter()
        .map(|f| (f.tbl, f.def))
        .collect()
    };
    let expected = [
        (
            "events",
            "FOREIGN KEY (event_type_id) REFERENCES event_types(event_type_id)",
        ),
        ("events", "FOREIGN KEY (user_id) REFERENCES users(user_id)"),
        (
            "pageviews",
            "FOREIGN KEY (event_id) REFERENCES events(event_id) ON DELETE CASCADE",
        ),
        (
            "pageviews",
            "FOREIGN KEY (user_id) REFERENCES users(user_id)",
        ),
        (
            "purchases",
            "FOREIGN KEY (event_id) REFERENCES events(event_id) ON DELETE CASCADE",
        ),
        (
            "purchases",
            "FOREIGN KEY (user_id) REFERENCES users(user_id)",
        ),
    ];
    for (table, def) in expected {
        assert!(
            fks.iter().any(|(t, d)| t == table && d == def),
            "missing FK on {table}: {def}; have {fks:?}"
        );
    }

    conn.batch_execute(
        "INSERT INTO users (external_id) VALUES ('u1');
         INSERT INTO events (event_id, \"timestamp\", user_id, event_type_id)
           VALUES ('00000000-0000-0000-0000-000000000001', now(), 1, 1);",
    )
    .await
    .expect("valid rows insert");
    let orphans = [
        "INSERT INTO events (event_id, \"timestamp\", user_id, event_type_id) VALUES ('00000000-0000-0000-0000-000000000002', now(), 999, 1)",
        "INSERT INTO events (event_id, \"timestamp\", event_type_id) VALUES ('00000000-0000-0000-0000-000000000003', now(), 999)",
        "INSERT INTO pageviews (event_id, user_id, page_url) VALUES ('00000000-0000-0000-0000-0000000000ff', 1, '/x')",
        "INSERT INTO pageviews (event_id, user_id, page_url) VALUES ('00000000-0000-0000-0000-000000000001', 999, '/x')",
        "INSERT INTO purchases (event_id, user_id, product_id, quantity, amount) VALUES ('00000000-0000-0000-0000-0000000000ff', 1, 'p', 1, 1)",
        "INSERT INTO purchases (event_id, user_id, product_id, quantity, amount) VALUES ('00000000-0000-0000-0000-000000000001', 999, 'p', 1, 1)",
    ];
    for sql in orphans {
        let error = conn.batch_execute(sql).await.expect_err(sql);
        assert!(error.to_string().contains("foreign key"), "{sql}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_endpoint_counts_rpcs_by_method_and_code() {
    let app = TestApp::spawn().await;
    wait_for_health(&app, "", ServingStatus::Serving).await;
    let _ = app
        .query()
        .get_metrics(pulse::grpc::proto::GetMetricsRequest::default())
        .await;
    let (status, body) = app.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(
            r#"pulse_grpc_requests_total{method="/grpc.health.v1.Health/Watch",code="Ok"}"#
        ) || body.contains(r#"method="/pulse.v1.QueryService/GetMetrics""#),
        "{body}"
    );
    assert!(
        body.contains("pulse_grpc_request_duration_seconds_bucket"),
        "{body}"
    );
    assert!(body.contains("pulse_database_up 1"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_creates_its_database_serves_and_exits_zero_on_sigterm() {
    // A database name nobody has: `serve` must create and migrate it.
    let name = format!("pulse_bin_{}", uuid::Uuid::new_v4().simple());
    let url = crate::helpers::database_url(&name);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", &url)
        .env("PULSE_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pulse");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let grpc_addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            let record: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            if record["message"] == "pulse serving" {
                return record["grpc_addr"].as_str().expect("grpc_addr").to_owned();
            }
        }
        panic!("pulse exited before serving");
    })
    .await
    .expect("pulse serves within 30 s");

    let list = crate::foundation::run_grpcurl(&["-plaintext", &grpc_addr, "list"]).await;
    assert!(list.contains("pulse.v1.IngestService"), "{list}");

    let pid = child.id().expect("pid") as i32;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("pulse exits within 20 s of SIGTERM")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");

    let mut admin = admin_connection().await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop");
}
