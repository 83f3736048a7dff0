//! Hardening against hostile and careless clients: revocation that ends
//! open streams, UpsertUsers metered, the Host check and security headers
//! of the HTTP listener, escaped logs and CLI tables, the `data` nesting
//! rule on both sides of its limit and JSON 404s under `/api/v1`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use pulse::domain::key::Scope;
use pulse::grpc::proto::*;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDatabase, http_get_with};
use crate::ingest::{click, ingest, message};

fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ASCII key"),
    );
    request
}

fn users(n: usize) -> UpsertUsersRequest {
    UpsertUsersRequest {
        users: (0..n)
            .map(|i| User {
                user_id: format!("user-{i}-{}", Uuid::new_v4().simple()),
                username: format!("name {i}"),
                email: String::new(),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_users_is_paid_from_the_keys_events_per_second() {
    let db = TestDatabase::migrated().await;
    let (_, key) = db.create_key(Scope::Ingest).await;
    let (_, other) = db.create_key(Scope::Ingest).await;
    let app = TestApp::spawn_on(db, |s| s.quotas.events_per_second = 1_000).await;

    // The first request may go into debt (no request is too big to pass),
    // the next one waits for the debt to be paid.
    app.ingest()
        .upsert_users(keyed(users(3_000), &key))
        .await
        .expect("a key not in debt passes");
    let refused = app
        .ingest()
        .upsert_users(keyed(users(10), &key))
        .await
        .expect_err("3,000 users under 1,000 events/s leave the key in debt");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("retry after"),
        "{}",
        refused.message()
    );
    let retry_ms: u64 = refused
        .metadata()
        .get("retry-after-ms")
        .expect("retry-after-ms")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("a number");
    assert!(retry_ms > 1_000, "about 2 s of debt, got {retry_ms} ms");
    // Events of the same key share the budget.
    let status = app
        .ingest()
        .ingest_events(keyed(
            tokio_stream::iter(vec![message(vec![click(Uuid::new_v4(), "u")])]),
            &key,
        ))
        .await
        .expect_err("events share the users' budget");
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Another key has its own budget.
    app.ingest()
        .upsert_users(keyed(users(10), &other))
        .await
        .expect("another key passes");
}

/// `levels` objects nested in each other around `leaf`.
fn nested(levels: usize, leaf: prost_types::value::Kind) -> prost_types::Struct {
    let mut inner = prost_types::Struct::default();
    inner
        .fields
        .insert("a".into(), prost_types::Value { kind: Some(leaf) });
    for _ in 1..levels {
        let mut outer = prost_types::Struct::default();
        outer.fields.insert(
            "a".into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(inner)),
            },
        );
        inner = outer;
    }
    inner
}

#[tokio::test(flavor = "multi_thread")]
async fn data_nests_sixteen_objects_around_a_scalar_and_no_more() {
    use prost_types::value::Kind;
    let app = TestApp::spawn().await;
    let event = |data| Event {
        data: Some(data),
        ..click(Uuid::new_v4(), "u")
    };
    let response = ingest(
        &app,
        vec![message(vec![
            event(nested(16, Kind::NumberValue(1.0))),
            event(nested(16, Kind::StringValue("leaf".into()))),
            event(nested(
                15,
                Kind::StructValue(prost_types::Struct::default()),
            )),
            event(nested(17, Kind::NumberValue(1.0))),
            event(nested(
                16,
                Kind::StructValue(prost_types::Struct::default()),
            )),
        ])],
    )
    .await
    .expect("a stream with rejected events is OK");
    assert_eq!(response.accepted, 3, "{response:?}");
    assert_eq!(response.rejected, 2, "{response:?}");
    let indexes: Vec<u64> = response.errors.iter().map(|e| e.index).collect();
    assert_eq!(indexes, [3, 4]);
    for error in &response.errors {
        assert!(
            error.reason.contains("nested deeper than 16"),
            "{}",
            error.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_api_routes_answer_json_404s() {
    let app = TestApp::spawn().await;
    for path in [
        "/api/v1",
        "/api/v1/",
        "/api/v1/nope",
        "/api/v1/alerts",
        "/api/v1/alerts/nope/deeper",
        "/api/v2/metrics",
    ] {
        let (status, body) = app.http_get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
        assert_eq!(json["error"]["code"], "NOT_FOUND", "{path}: {body}");
    }
    // Keys are still checked first under /api/v1 once one exists.
    let db = TestDatabase::migrated().await;
    let (_, ingest_key) = db.create_key(Scope::Ingest).await;
    let app = TestApp::spawn_on(db, |_| {}).await;
    let (status, body) = app.http_get("/api/v1/").await;
    assert_eq!(status, 401, "{body}");
    let bearer = format!("Bearer {ingest_key}");
    let (status, body) =
        http_get_with(app.http_addr, "/api/v1/nope", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 403, "{body}");
}

/// Runs the real `pulse` binary with `args` against `url`, its standard
/// output closed before it writes anything (a reader that went away).
async fn pulse_with_stdout_closed(url: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pulse");
    drop(child.stdout.take());
    let output = child.wait_with_output().await.expect("pulse ends");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn key_rows(db: &TestDatabase) -> i64 {
    crate::ingest::count(db, "api_keys").await
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_create_never_leaves_a_key_nobody_saw_and_never_panics() {
    let db = TestDatabase::migrated().await;
    // stdout closed before the key is written: no key, a message, exit 1.
    let (status, stderr) = pulse_with_stdout_closed(
        &db.url,
        &["keys", "create", "--scope", "ingest", "--name", "lost"],
    )
    .await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("the key was not created"), "{stderr}");
    assert_eq!(key_rows(&db).await, 0, "a key nobody saw was committed");

    // `| head -c 10`: head gets the start of the key, whatever happens to
    // the rest; the key exists exactly when pulse reports success.
    for _ in 0..3 {
        let before = key_rows(&db).await;
        let output = tokio::process::Command::new("bash")
            .args([
                "-c",
                "set -o pipefail; \"$0\" keys create --scope ingest --name piped | head -c 10",
                env!("CARGO_BIN_EXE_pulse"),
            ])
            .env("DATABASE_URL", &db.url)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .expect("bash runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        // The key is the first thing written: head shows its first 10 bytes.
        assert!(
            output.stdout.len() == 10 && output.stdout.starts_with(b"pulse_"),
            "{output:?}"
        );
        let created = key_rows(&db).await - before;
        match output.status.code() {
            Some(0) => assert_eq!(created, 1, "{stderr}"),
            Some(1) => assert_eq!(created, 0, "{stderr}"),
            other => panic!("exit {other:?}: {stderr}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_list_escapes_names_and_survives_a_closed_pipe() {
    let db = TestDatabase::migrated().await;
    // A name as an older version (or a hand-written INSERT) could store it.
    let forged = "ops\n0193aaaa-0000-7000-8000-000000000000  admin   2026-01-01T00:00:00Z  -  -  \x1b[31mroot\x1b[0m";
    let key = pulse::domain::key::NewKey::generate();
    let mut conn = db.connect().await;
    let id = pulse::db::keys::create(&mut conn, forged, Scope::Query, &key.hash)
        .await
        .expect("store a key");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["keys", "list"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .expect("pulse keys list");
    assert!(output.status.success(), "{output:?}");
    let list = String::from_utf8_lossy(&output.stdout);
    assert_eq!(list.lines().count(), 2, "header and one row: {list}");
    assert!(!list.contains('\x1b'), "{list:?}");
    let row = list.lines().nth(1).expect("a row");
    assert!(row.starts_with(&id.to_string()), "{row}");
    assert!(row.ends_with("ops\\n0193aaaa-0000-7000-8000-000000000000  admin   2026-01-01T00:00:00Z  -  -  \\u{1b}[31mroot\\u{1b}[0m"), "{row}");

    // New names with control characters are refused outright.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["keys", "create", "--scope", "query", "--name", "a\nb"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .expect("pulse keys create");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("control characters"));

    // A closed pipe is an error exit with a message, not a panic.
    let (status, stderr) = pulse_with_stdout_closed(&db.url, &["keys", "list"]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("standard output"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_id_with_a_newline_cannot_forge_a_log_line() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let db = TestDatabase::migrated().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--no-migrate",
        ])
        .env("DATABASE_URL", &db.url)
        .env("PULSE_LOG_FORMAT", "text")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pulse");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut log = Vec::new();
    let grpc_addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            log.push(line.clone());
            if let Some(rest) = line.split_once("grpc_addr=").map(|(_, r)| r) {
                return rest
                    .split_whitespace()
                    .next()
                    .expect("an address")
                    .to_owned();
            }
        }
        panic!("pulse exited before serving: {log:?}");
    })
    .await
    .expect("pulse serves within 30 s");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let forged = "x\n2026-01-01T00:00:00.000000Z  INFO pulse::grpc::observe: rpc method=/pulse.v1.AlertService/DeleteAlertRule code=Ok\r\x1b[2K";
    let status = pulse::grpc::proto::alert_service_client::AlertServiceClient::new(channel)
        .get_alert_rule(GetAlertRuleRequest { id: forged.into() })
        .await
        .expect_err("not a UUID");
    assert_eq!(status.code(), Code::InvalidArgument);
    let record = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            log.push(line.clone());
            if line.contains("GetAlertRule") {
                return line;
            }
        }
        panic!("no log line for the call: {log:?}");
    })
    .await
    .expect("the call is logged");
    // Whatever follows in the log, the call's own line holds the whole id.
    assert!(
        record.contains("x\\n2026-01-01T00:00:00.000000Z  INFO"),
        "{record}"
    );
    assert!(record.contains("\\r\\u{1b}[2K"), "{record}");
    assert!(
        !record.contains('\x1b') && !record.contains('\r'),
        "{record:?}"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
    while let Ok(Some(line)) = lines.next_line().await {
        log.push(line);
    }
    let forged_lines: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("2026-01-01T00:00:00.000000Z"))
        .collect();
    assert!(forged_lines.is_empty(), "forged: {forged_lines:?}");
}

/// One raw HTTP/1.1 request with exactly `headers` (no Host added);
/// returns the status, the response headers (lower-case names) and body.
pub async fn raw_get(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    let extra: String = headers
        .iter()
        .fold(String::new(), |mut out, (name, value)| {
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{name}: {value}\r\n"));
            out
        });
    let request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebound_host_name_is_refused_and_allowed_hosts_pass() {
    let app = TestApp::spawn_with(|s| {
        s.public_hosts = vec!["pulse.example.com".into(), "stats.internal:8443".into()];
    })
    .await;
    let port = app.http_addr.port();
    let metrics_path = "/api/v1/metrics?metric=events&range=15m";
    // A loopback server with no keys: only the Host stands between a
    // rebinding page and the data.
    for host in [
        "evil.example".to_owned(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        "stats.internal:8080".to_owned(),
    ] {
        for path in [
            "/",
            metrics_path,
            "/api/v1/alerts/rules",
            "/metrics",
            "/assets/app.js",
        ] {
            let (status, _, body) = raw_get(app.http_addr, path, &[("Host", &host)]).await;
            assert_eq!(status, 403, "{host} {path}: {body}");
            let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
            assert_eq!(json["error"]["code"], "PERMISSION_DENIED", "{body}");
            assert!(
                json["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("--public-host"),
                "{body}"
            );
            assert!(!body.contains("\"series\""), "{body}");
        }
    }
    let (status, _, body) = raw_get(app.http_addr, metrics_path, &[]).await;
    assert_eq!(status, 403, "no Host at all: {body}");

    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("[::1]:{port}"),
        "pulse.example.com".to_owned(),
        format!("PULSE.example.com:{port}"),
        "stats.internal:8443".to_owned(),
    ] {
        let (status, _, body) = raw_get(app.http_addr, metrics_path, &[("Host", &host)]).await;
        assert_eq!(status, 200, "{host}: {body}");
        assert!(body.contains("\"series\""), "{body}");
    }
    // Refusals are counted like any response.
    let (_, text) = app.http_get("/metrics").await;
    assert!(
        text.contains("pulse_http_requests_total{route=\"/api/v1/metrics\",status=\"403\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_its_assets_carry_security_headers() {
    let app = TestApp::spawn().await;
    let host = app.http_addr.to_string();
    for path in [
        "/",
        "/assets/app.js",
        "/assets/app.css",
        "/favicon.svg",
        "/api/v1/alerts/rules",
        "/api/v1/nope",
        "/metrics",
    ] {
        let (status, headers, _) = raw_get(app.http_addr, path, &[("Host", &host)]).await;
        assert!(status == 200 || status == 404, "{path}: {status}");
        assert_eq!(
            header(&headers, "x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(header(&headers, "x-frame-options"), Some("DENY"), "{path}");
        let csp =
            header(&headers, "content-security-policy").unwrap_or_else(|| panic!("{path}: no CSP"));
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-eval"), "{csp}");
        assert!(
            !csp.split(';')
                .any(|d| d.trim().starts_with("script-src") && d.contains("unsafe-inline")),
            "{csp}"
        );
    }
    // The CSP allows no inline script, so the page must have none.
    let (_, _, page) = raw_get(app.http_addr, "/", &[("Host", &host)]).await;
    let scripts: Vec<&str> = page.split("<script").skip(1).collect();
    assert!(!scripts.is_empty());
    for script in scripts {
        let tag = script.split('>').next().unwrap_or_default();
        assert!(
            tag.contains("src=\"/assets/"),
            "an inline script: <script{script}"
        );
    }
    for handler in [
        "onclick=",
        "onload=",
        "onerror=",
        "onsubmit=",
        "javascript:",
    ] {
        assert!(!page.contains(handler), "inline {handler} in the page");
    }
    // The key is kept for the tab's session only.
    let (_, _, js) = raw_get(app.http_addr, "/assets/app.js", &[("Host", &host)]).await;
    assert!(js.contains("sessionStorage.getItem(KEY_STORAGE)"));
    assert!(js.contains("sessionStorage.setItem(KEY_STORAGE"));
    assert!(!js.contains("localStorage.setItem(KEY_STORAGE"));
    assert!(!js.contains("localStorage.getItem(KEY_STORAGE"));
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_cuts_open_ingest_and_watch_streams_within_the_refresh_interval() {
    use futures::StreamExt;
    use tokio_stream::wrappers::ReceiverStream;
    let db = TestDatabase::migrated().await;
    let (ingest_id, ingest_key) = db.create_key(Scope::Ingest).await;
    let (admin_id, admin_key) = db.create_key(Scope::Admin).await;
    let (_, other_admin) = db.create_key(Scope::Admin).await;
    let refresh = Duration::from_millis(300);
    let app = TestApp::spawn_on(db, |s| s.key_refresh_interval = refresh).await;

    // An IngestEvents stream that keeps sending, and a WatchAlerts stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<IngestEventsRequest>(4);
    let mut client = app.ingest();
    let key = ingest_key.clone();
    let ingest_call = tokio::spawn(async move {
        client
            .ingest_events(keyed(ReceiverStream::new(rx), &key))
            .await
    });
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            let batch = message((0..5).map(|_| click(Uuid::new_v4(), "u")).collect());
            if tx.send(batch).await.is_err() {
                return sent;
            }
            sent += 5;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    let mut watch = app
        .alerts()
        .watch_alerts(keyed(WatchAlertsRequest::default(), &admin_key))
        .await
        .expect("WatchAlerts opens")
        .into_inner();
    let mut other_watch = app
        .alerts()
        .watch_alerts(keyed(WatchAlertsRequest::default(), &other_admin))
        .await
        .expect("WatchAlerts opens")
        .into_inner();
    // Events are stored while the key is valid.
    let started = Instant::now();
    while crate::ingest::count(&app.db, "events").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut conn = app.db.connect().await;
    pulse::db::keys::revoke(&mut conn, ingest_id)
        .await
        .expect("revoke");
    pulse::db::keys::revoke(&mut conn, admin_id)
        .await
        .expect("revoke");
    let revoked_at = Instant::now();

    let status = tokio::time::timeout(Duration::from_secs(5), ingest_call)
        .await
        .expect("the ingest stream ends")
        .expect("task")
        .expect_err("a revoked key's stream fails");
    let ingest_cut = revoked_at.elapsed();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{}", status.message());
    let item = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch stream ends");
    let watch_cut = revoked_at.elapsed();
    let status = item.expect("a status").expect_err("UNAUTHENTICATED");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Within the refresh interval, plus the time to notice and answer.
    let bound = refresh + Duration::from_millis(700);
    assert!(ingest_cut < bound, "ingest cut after {ingest_cut:?}");
    assert!(watch_cut < bound, "watch cut after {watch_cut:?}");
    sender.await.expect("sender task");

    // Nothing is stored after the cut.
    let stored = crate::ingest::count(&app.db, "events").await;
    tokio::time::sleep(refresh * 2).await;
    assert_eq!(crate::ingest::count(&app.db, "events").await, stored);
    // Another key's stream is untouched.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), other_watch.next())
            .await
            .is_err(),
        "the other key's stream stays open and quiet"
    );
    eprintln!("revocation: ingest cut after {ingest_cut:?}, watch after {watch_cut:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_multibyte_event_id_is_reported_cut_on_a_character_boundary() {
    let app = TestApp::spawn().await;
    // Byte 64 falls inside an `é`: cutting there used to panic the handler.
    let id = format!("a{}", "é".repeat(40));
    let response = ingest(
        &app,
        vec![message(vec![
            Event {
                event_id: id.clone(),
                ..click(Uuid::new_v4(), "u")
            },
            click(Uuid::new_v4(), "u"),
        ])],
    )
    .await
    .expect("a bad id is rejected alone");
    assert_eq!((response.accepted, response.rejected), (1, 1));
    assert_eq!(response.errors[0].event_id, id[..63]);
}
