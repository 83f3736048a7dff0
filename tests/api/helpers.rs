//! Test harness: a fresh database per test, cloned from a migrated template,
//! and a Pulse server on port 0 talking over a real socket.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use pulse::app::App;
use pulse::config::ServeSettings;
use pulse::grpc::proto::alert_service_client::AlertServiceClient;
use pulse::grpc::proto::ingest_service_client::IngestServiceClient;
use pulse::grpc::proto::query_service_client::QueryServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

/// The server the tests create their databases on. Any database of it works
/// for administration; `postgres` always exists.
pub fn admin_url() -> String {
    std::env::var("PULSE_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The URL of database `name` on the test server.
pub fn database_url(name: &str) -> String {
    let mut url = url::Url::parse(&admin_url()).expect("PULSE_TEST_ADMIN_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A hash of every migration file, so a changed migration gets a new template.
fn migrations_fingerprint() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = walk(&dir);
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.to_string_lossy().hash(&mut hasher);
        std::fs::read(&file)
            .expect("migration file is readable")
            .hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("migrations folder exists") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

pub async fn admin_connection() -> AsyncPgConnection {
    AsyncPgConnection::establish(&admin_url())
        .await
        .expect("the test PostgreSQL answers (is it running? see README)")
}

/// Makes sure the migrated template exists; returns its name. Several test
/// processes may race here: an advisory lock serialises them, and the
/// template is built under a temporary name and renamed when complete.
async fn ensure_template() -> String {
    let name = format!("pulse_tpl_{}", migrations_fingerprint());
    let mut admin = admin_connection().await;
    admin
        .batch_execute("SELECT pg_advisory_lock(727274)")
        .await
        .expect("advisory lock");
    let exists = pulse::db::server::database_exists(&mut admin, &name)
        .await
        .expect("catalog query");
    if !exists {
        let building = format!("{name}_building");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .await
            .expect("drop stale template");
        admin
            .batch_execute(&format!("CREATE DATABASE {building}"))
            .await
            .expect("create template");
        pulse::db::migrations::run_pending(&database_url(&building))
            .await
            .expect("migrations apply to an empty database");
        admin
            .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
            .await
            .expect("rename template");
    }
    admin
        .batch_execute("SELECT pg_advisory_unlock(727274)")
        .await
        .expect("advisory unlock");
    name
}

/// A database of its own for one test, dropped when the value is.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// A fresh, migrated database.
    pub async fn migrated() -> Self {
        let template = ensure_template().await;
        Self::create(Some(&template)).await
    }

    /// A fresh database with no schema at all.
    pub async fn empty() -> Self {
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> Self {
        let name = format!("pulse_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_connection().await;
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name}"),
        };
        admin
            .batch_execute(&sql)
            .await
            .expect("create test database");
        let url = database_url(&name);
        Self { name, url }
    }

    /// Stores a new API key of `scope`; returns its id and the key.
    pub async fn create_key(&self, scope: pulse::domain::key::Scope) -> (uuid::Uuid, String) {
        let key = pulse::domain::key::NewKey::generate();
        let mut conn = self.connect().await;
        let id = pulse::db::keys::create(&mut conn, "test", scope, &key.hash)
            .await
            .expect("store a key");
        (id, key.secret)
    }

    /// A direct connection, for assertions on stored rows.
    pub async fn connect(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime; a thread of its own may block.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(mut admin) = AsyncPgConnection::establish(&admin_url()).await {
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A running Pulse server with its own database.
pub struct TestApp {
    pub db: TestDatabase,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// A server with default settings on a fresh migrated database.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server whose settings `adjust` may change first.
    pub async fn spawn_with(adjust: impl FnOnce(&mut ServeSettings)) -> Self {
        let db = TestDatabase::migrated().await;
        Self::spawn_on(db, adjust).await
    }

    /// A server on an existing database.
    pub async fn spawn_on(db: TestDatabase, adjust: impl FnOnce(&mut ServeSettings)) -> Self {
        let mut settings = ServeSettings::for_database(&db.url);
        settings.health_interval = std::time::Duration::from_millis(200);
        adjust(&mut settings);
        let app = App::build(settings).await.expect("the app builds");
        let grpc_addr = app.grpc_addr();
        let http_addr = app.http_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        // The listener is bound already, so connecting needs no retry loop.
        let channel = Endpoint::from_shared(format!("http://{grpc_addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the test server");
        Self {
            db,
            grpc_addr,
            http_addr,
            channel,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel.clone())
    }

    pub fn query(&self) -> QueryServiceClient<Channel> {
        QueryServiceClient::new(self.channel.clone())
    }

    pub fn alerts(&self) -> AlertServiceClient<Channel> {
        AlertServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// Fetches an HTTP path of the server as text.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_addr, path).await
    }

    /// Signals shutdown and waits for the server to return.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop_and_wait().await
    }

    /// Signals shutdown (like SIGTERM) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the server to return after [`TestApp::begin_shutdown`].
    pub async fn wait_stopped(&mut self) -> anyhow::Result<()> {
        self.stop_and_wait().await
    }

    async fn stop_and_wait(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task did not panic"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A minimal HTTP/1.1 GET over a real socket.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, &[]).await
}

/// [`http_get`] with extra request headers.
pub async fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
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
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// What a test says when a program it runs is missing: `scripts/setup`
/// installs every one (`scripts/test` runs it first).
pub const INSTALL_HINT: &str = "run scripts/setup (scripts/test runs it first): it installs \
     grpcurl, Chromium, tests/browser's node packages, Prometheus and the Python venv";

/// Path of the real grpcurl binary (`GRPCURL` or on PATH). `scripts/setup` installs it.
pub fn grpcurl() -> String {
    let grpcurl = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_owned());
    require(
        "grpcurl",
        std::process::Command::new(&grpcurl).arg("-version"),
    );
    grpcurl
}

/// The Python interpreter of the tests' virtual environment (grpcio,
/// grpcio-tools): `PULSE_PYTHON`, else `.venv/bin/python3` in the
/// repository, which `scripts/setup` creates. Never the system interpreter.
pub fn python() -> std::path::PathBuf {
    let python = std::env::var_os("PULSE_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3"),
        std::path::PathBuf::from,
    );
    require(
        &format!("{} with grpcio and grpcio-tools", python.display()),
        std::process::Command::new(&python).args(["-c", "import grpc, grpc_tools"]),
    );
    python
}

/// Fails the test, saying how to install `what`, unless `probe` runs and
/// succeeds. A missing tool is a failure, never a skip.
pub fn require(what: &str, probe: &mut std::process::Command) {
    let ok = probe
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{what} is missing: {INSTALL_HINT}");
}
