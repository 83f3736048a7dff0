//! The real `pulse` binary as a person meets it: the start-up log says
//! where to look, a busy port stops the start before the database is
//! touched, help is grouped and never shows a password, logs carry no
//! colour codes in a pipe, `keys create --if-none` bootstraps once, and
//! `loadgen` stops with a clear reason instead of retrying a refusal.

use std::process::Stdio;
use std::time::Duration;

use pulse::domain::key::Scope;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::{TestApp, TestDatabase, admin_connection, database_url, http_get};

/// Runs `pulse args…` with `env`; returns (success, stdout, stderr). Fails
/// the test if it runs longer than `limit`.
async fn pulse(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pulse"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("pulse {args:?} still runs after {limit:?}"))
        .expect("run pulse");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn database_exists(name: &str) -> bool {
    let mut admin = admin_connection().await;
    pulse::db::server::database_exists(&mut admin, name)
        .await
        .expect("catalog query")
}

/// `url` with a password added (trust authentication ignores it).
fn with_password(url: &str, password: &str) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    url.set_password(Some(password)).expect("a password");
    url.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_start_up_log_names_grpc_and_the_dashboard_url_without_colour_or_password() {
    let db = TestDatabase::migrated().await;
    let password = "s3cret-start-up";
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        // The default text format, into a pipe: not a terminal.
        .env_remove("PULSE_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env("DATABASE_URL", with_password(&db.url, password))
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pulse");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    let serving = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            log.push_str(&line);
            log.push('\n');
            if line.contains("pulse serving") {
                return line;
            }
        }
        panic!("pulse exited before serving:\n{log}");
    })
    .await
    .expect("pulse serves within 30 s");
    let field = |name: &str| {
        serving
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {serving}"))
            .to_owned()
    };
    let (grpc, http, dashboard) = (field("grpc_addr"), field("http_addr"), field("dashboard"));
    assert!(
        grpc.starts_with("127.0.0.1:") && !grpc.ends_with(":0"),
        "{serving}"
    );
    assert_eq!(dashboard, format!("http://{http}/"), "{serving}");
    let (status, page) = http_get(http.parse().expect("an address"), "/").await;
    assert_eq!(status, 200, "the printed dashboard URL serves the page");
    assert!(page.contains("<html"), "{page}");

    let pid = child.id().expect("pid").to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    })
    .await
    .expect("pulse exits on SIGTERM");
    log.push_str(&rest);
    assert!(!log.contains('\x1b'), "colour codes in a pipe:\n{log:?}");
    assert!(!log.contains(password), "the password was logged:\n{log}");
    assert!(log.contains("shut down cleanly"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_right_after_the_start_up_log_still_shuts_down_cleanly() {
    let db = TestDatabase::migrated().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pulse");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut log = String::new();
    while let Some(line) = lines.next_line().await.expect("read log") {
        log.push_str(&line);
        log.push('\n');
        if line.contains("pulse serving") {
            // At once: the handlers must be in place before this line.
            let pid = child.id().expect("pid").to_string();
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill");
        }
    }
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("pulse exits")
        .expect("wait");
    assert!(exit.success(), "{exit:?}:\n{log}");
    assert!(log.contains("shut down cleanly"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_in_use_stops_the_start_before_the_database_is_created() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    for (flag, other, what) in [
        ("--http-addr", "--grpc-addr", "HTTP"),
        ("--grpc-addr", "--http-addr", "gRPC"),
    ] {
        let name = format!("pulse_busy_{}", uuid::Uuid::new_v4().simple());
        let (ok, _, stderr) = pulse(
            &["serve", flag, &busy_addr, other, "127.0.0.1:0"],
            &[("DATABASE_URL", &database_url(&name))],
            Duration::from_secs(20),
        )
        .await;
        assert!(!ok, "serve started on a busy port");
        assert!(
            stderr.contains(&format!("cannot bind the {what} listener to {busy_addr}"))
                && stderr.contains("in use"),
            "{stderr}"
        );
        assert!(
            !database_exists(&name).await,
            "the database was created before the port was found busy"
        );
    }
    drop(busy);
}

#[tokio::test]
async fn help_is_grouped_and_never_shows_a_password_from_the_environment() {
    let env = [
        ("DATABASE_URL", "postgres://u:s3cret-db@127.0.0.1:1/db"),
        (
            "PULSE_READ_DATABASE_URL",
            "postgres://r:s3cret-replica@127.0.0.1:1/db",
        ),
    ];
    for args in [
        &["serve", "-h"][..],
        &["serve", "--help"],
        &["migrate", "status", "--help"],
        &["keys", "create", "--help"],
        &["bench-queries", "--help"],
    ] {
        let (ok, stdout, stderr) = pulse(args, &env, Duration::from_secs(10)).await;
        assert!(ok, "{args:?}: {stderr}");
        assert!(stdout.contains("DATABASE_URL"), "{args:?}:\n{stdout}");
        assert!(!stdout.contains("s3cret"), "{args:?} shows it:\n{stdout}");
    }
    let (_, help, _) = pulse(&["serve", "--help"], &env, Duration::from_secs(10)).await;
    let headings: Vec<&str> = help
        .lines()
        .filter(|l| l.ends_with(':') && !l.starts_with(' '))
        .collect();
    for heading in [
        "Database:",
        "Listeners:",
        "Background work:",
        "Limits on what clients send:",
        "Per-API-key limits:",
        "TLS:",
        "Maintenance jobs:",
        "Read replica:",
        "Logging:",
    ] {
        assert!(
            headings.contains(&heading),
            "{heading} missing: {headings:?}"
        );
    }
    // Every option sits under a named heading, none left in a long
    // ungrouped "Options:" list (only -h and -V).
    let options = help
        .split("\nOptions:\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_default();
    assert!(
        options
            .lines()
            .filter(|l| l.trim_start().starts_with('-'))
            .count()
            <= 2,
        "ungrouped options:\n{options}"
    );
}

#[tokio::test]
async fn errors_name_the_server_but_never_its_password() {
    let env = [("DATABASE_URL", "postgres://u:s3cret-db@127.0.0.1:1/db")];
    for args in [
        &["migrate", "status"][..],
        &["keys", "list"],
        &[
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ],
    ] {
        let (ok, stdout, stderr) = pulse(args, &env, Duration::from_secs(20)).await;
        assert!(!ok, "{args:?} succeeded against a closed port");
        assert!(stderr.contains("127.0.0.1:1"), "{args:?}: {stderr}");
        assert!(
            !stdout.contains("s3cret") && !stderr.contains("s3cret"),
            "{args:?}:\n{stdout}\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_create_if_none_bootstraps_the_first_key_once() {
    // A database nobody made yet: the one-shot `init` of docker-compose.yml.
    let name = format!("pulse_init_{}", uuid::Uuid::new_v4().simple());
    let db = TestDatabase {
        url: database_url(&name),
        name,
    };
    let create = [
        "keys",
        "create",
        "--scope",
        "admin",
        "--name",
        "compose-admin",
        "--if-none",
    ];
    let env = [("DATABASE_URL", db.url.as_str())];
    // The key alone on stdout; what happened on stderr.
    let (ok, first, stderr) = pulse(&create, &env, Duration::from_secs(60)).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("created API key"), "{stderr}");
    let key = first.trim().to_owned();
    assert!(key.starts_with("pulse_") && !key.contains('\n'), "{first}");

    let (ok, second, stderr) = pulse(&create, &env, Duration::from_secs(60)).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("none created"), "{stderr}");
    assert!(!second.contains("pulse_"), "no key printed: {second}");
    let (ok, list, _) = pulse(&["keys", "list"], &env, Duration::from_secs(20)).await;
    assert!(ok);
    assert_eq!(list.lines().count(), 2, "a header and one key:\n{list}");

    // That key opens a server that listens beyond loopback.
    let app = TestApp::spawn_on(db, |s| {
        s.http_addr = "0.0.0.0:0".parse().expect("addr");
    })
    .await;
    let port = app.http_addr.port();
    let (status, _) = crate::helpers::http_get_with(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        "/api/v1/alerts/rules",
        &[("Authorization", &format!("Bearer {key}"))],
    )
    .await;
    assert_eq!(status, 200);
}

/// Counts of `IngestEvents` calls that ended with `code`, from `/metrics`.
async fn ingest_calls(app: &TestApp, code: &str) -> u64 {
    let (_, body) = app.http_get("/metrics").await;
    let series = format!(
        r#"pulse_grpc_requests_total{{method="/pulse.v1.IngestService/IngestEvents",code="{code}"}} "#
    );
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread")]
async fn loadgen_without_a_usable_key_says_what_to_do_and_retries_nothing() {
    let db = TestDatabase::migrated().await;
    db.create_key(Scope::Admin).await;
    let (_, query_key) = db.create_key(Scope::Query).await;
    let app = TestApp::spawn_on(db, |_| {}).await;
    let addr = app.grpc_addr.to_string();
    let run = |key: Option<String>| {
        let addr = addr.clone();
        async move {
            let mut args = vec![
                "loadgen".to_owned(),
                "--grpc-addr".to_owned(),
                addr,
                "--events".to_owned(),
                "20000".to_owned(),
                "--batch-size".to_owned(),
                "100".to_owned(),
                "--concurrency".to_owned(),
                "2".to_owned(),
            ];
            if let Some(key) = key {
                args.extend(["--api-key".to_owned(), key]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pulse(&args, &[], Duration::from_secs(15)).await
        }
    };

    let (ok, stdout, stderr) = run(None).await;
    assert!(!ok, "loadgen succeeded without a key");
    assert!(
        stderr.contains("needs an API key") && stderr.contains("--api-key"),
        "{stderr}"
    );
    let all = format!("{stdout}{stderr}");
    assert!(!all.contains("resends"), "{all}");
    let refused = ingest_calls(&app, "Unauthenticated").await;
    assert!(
        (1..=2).contains(&refused),
        "{refused} calls: at most one per connection, none retried"
    );

    let (ok, _, stderr) = run(Some(query_key)).await;
    assert!(!ok);
    assert!(
        stderr.contains("may not ingest") && stderr.contains("scope ingest or admin"),
        "{stderr}"
    );
    let denied = ingest_calls(&app, "PermissionDenied").await;
    assert!((1..=2).contains(&denied), "{denied} calls");

    let (ok, _, stderr) = run(Some("pulse_not-a-key".to_owned())).await;
    assert!(!ok);
    assert!(stderr.contains("refused the API key"), "{stderr}");
}

#[tokio::test]
async fn loadgen_connection_errors_name_host_and_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let target = format!("127.0.0.1:{port}");
    let (ok, _, stderr) = pulse(
        &["loadgen", "--grpc-addr", &target, "--events", "10"],
        &[],
        Duration::from_secs(20),
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains(&format!("cannot connect to Pulse at {target}"))
            && stderr.contains("pulse serve"),
        "{stderr}"
    );
}
