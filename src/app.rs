//! Wiring: [`App::build`] prepares the database, the pools and both listeners
//! (so the bound addresses are known before anything is served), then
//! [`App::run`] serves until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_reflection::server::{v1, v1alpha};

use crate::alerts::evaluator::EvaluatorSettings;
use crate::alerts::hub::Hub;
use crate::auth::{self, KeySet};
use crate::config::ServeSettings;
use crate::db::ingest::IdCache;
use crate::db::replica::{ReadPools, WriteLsn};
use crate::db::{self, PgPool, PoolRole};
use crate::error::{Error, Result};
use crate::grpc::deadline::DeadlineLayer;
use crate::grpc::decode_errors;
use crate::grpc::ingest::{IngestApi, IngestMemory, IngestState};
use crate::grpc::proto::alert_service_server::AlertServiceServer;
use crate::grpc::proto::ingest_service_server::IngestServiceServer;
use crate::grpc::proto::query_service_server::QueryServiceServer;
use crate::grpc::{alerts::AlertApi, auth::AuthLayer, observe::ObserveLayer, proto};
use crate::http::protect::AllowedHosts;
use crate::http::{self, HttpState};
use crate::listen::{self, TrackLayer, Tracker};
use crate::query::{Engine, Queries};
use crate::quota::Quotas;
use crate::supervise::Tasks;
use crate::telemetry::Telemetry;
use crate::tls::TlsFiles;

/// Users whose surrogate key each process keeps in memory (about 100 bytes each).
const USER_CACHE_ENTRIES: usize = 500_000;

/// The primary's pools, one per kind of work (see `db/pool.rs`): a flood
/// of one kind waits for its own connections only.
struct Pools {
    ingest: PgPool,
    query: PgPool,
    background: PgPool,
}

/// What every part of a running server is built from.
struct Core {
    settings: ServeSettings,
    pools: Pools,
    /// A streaming replica's pool for GetMetrics reads, if configured.
    read_pool: Option<PgPool>,
    telemetry: Arc<Telemetry>,
    /// The accepted API keys, loaded before serving so that no call slips
    /// through while a key exists.
    keys: Arc<KeySet>,
}

/// A Pulse server, built and bound but not yet serving.
pub struct App {
    core: Core,
    /// Bound before serving so callers (and tests on port 0) learn the port.
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    /// The certificate and key when TLS is on, checked before binding.
    tls: Option<TlsFiles>,
    /// `--public-host`, checked before binding.
    hosts: Arc<AllowedHosts>,
}

impl App {
    /// Binds both listeners, creates the database if missing, applies
    /// pending migrations (unless `no_migrate`), builds the pool and loads
    /// the API keys (refusing to listen beyond loopback without one).
    pub async fn build(settings: ServeSettings) -> anyhow::Result<Self> {
        // Bound first: a port in use stops the start before the database is
        // created or migrated. Nothing is served until `run`.
        let grpc_listener = bind(settings.grpc_addr, "gRPC").await?;
        let http_listener = bind(settings.http_addr, "HTTP").await?;
        db::ensure_database(&settings.database.url).await?;
        if settings.no_migrate {
            let pending = db::migrations::pending(&settings.database.url).await?;
            if !pending.is_empty() {
                anyhow::bail!(
                    "{} migration(s) pending ({}) and --no-migrate is set: run `pulse migrate run`",
                    pending.len(),
                    pending.join(", ")
                );
            }
        } else {
            let applied = db::migrations::run_pending(&settings.database.url)
                .await
                .context("migrating the database")?;
            for version in applied {
                tracing::info!(%version, "applied migration");
            }
        }
        let database = &settings.database;
        let pools = Pools {
            ingest: db::build_pool(database, &database.url, PoolRole::Ingest)?,
            query: db::build_pool(database, &database.url, PoolRole::Query)?,
            background: db::build_pool(database, &database.url, PoolRole::Background)?,
        };
        // The replica is read-only: never created or migrated, only read.
        let read_pool = match &settings.read_database_url {
            Some(url) => Some(db::build_pool(database, url, PoolRole::Query)?),
            None => None,
        };
        let tls = TlsFiles::load(&settings.tls)?;
        let hosts = Arc::new(AllowedHosts::new(&settings.public_hosts)?);
        let addrs = [settings.grpc_addr, settings.http_addr];
        let exposed = addrs.iter().any(|a| !a.ip().is_loopback());
        let keys = KeySet::load(&pools.background, exposed).await?;
        auth::check_exposure(&keys, &addrs)?;
        Ok(Self {
            core: Core {
                settings,
                pools,
                read_pool,
                telemetry: Telemetry::new(),
                keys,
            },
            grpc_listener,
            http_listener,
            tls,
            hosts,
        })
    }

    /// The address the gRPC listener is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then stops accepting, ends streams,
    /// lets in-flight calls finish within the grace period, and returns.
    /// A background task that ends early stops the server the same way and
    /// is returned as the error.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let App {
            core,
            grpc_listener,
            http_listener,
            tls,
            hosts,
        } = self;
        let grpc_addr = grpc_listener.local_addr().ok();
        let http_addr = http_listener.local_addr().ok();
        let stop = CancellationToken::new();
        let mut tasks = Tasks::default();

        let health = core.start_health(&mut tasks, &stop).await;
        core.spawn_jobs(&mut tasks, &stop);
        // GetMetrics and the evaluator share the rollup answers they cache.
        let engine = Arc::new(Engine::new(
            core.settings.query_cache_bytes,
            core.settings.query_memory_bytes,
        ));
        let hub = core.start_alerts(&mut tasks, engine.clone(), &stop).await?;
        let services = core.services(engine);
        let grpc = core.grpc_server(grpc_listener, tls.as_ref(), health, hub, &services, &stop)?;
        let http = core.http_server(http_listener, tls.as_ref(), hosts, services, &stop);
        tracing::info!(
            grpc_addr = %display_addr(grpc_addr),
            http_addr = %display_addr(http_addr),
            dashboard = %dashboard_url(http_addr, tls.is_some()),
            tls = tls.is_some(),
            "pulse serving"
        );
        // Both servers are fully built before either is spawned, so a
        // failure here never leaves one serving without the other.
        let grpc_task = tokio::spawn(grpc);
        let http_task = tokio::spawn(http);

        let failure = tokio::select! {
            () = shutdown => None,
            exit = tasks.first_failure(&core.telemetry) => Some(exit),
        };
        tracing::info!("shutting down: no new calls, finishing in-flight ones");
        stop.cancel();
        let grace = core.settings.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            let grpc_result = grpc_task.await;
            let http_result = http_task.await;
            (grpc_result, http_result)
        })
        .await;
        tasks.join_all().await;
        core.close_pools();
        if let Some(exit) = failure {
            anyhow::bail!("{exit}");
        }
        match drained {
            Ok((Ok(Ok(())), Ok(Ok(())))) => {
                tracing::info!("shut down cleanly");
                Ok(())
            }
            Ok((grpc, http)) => {
                anyhow::bail!("server ended with an error: grpc={grpc:?} http={http:?}")
            }
            Err(_) => {
                tracing::warn!(
                    grace_s = grace.as_secs_f64(),
                    "calls still running after the grace period were cut"
                );
                Ok(())
            }
        }
    }
}

/// What the request handlers of both transports share.
struct Services {
    /// GetMetrics and the dashboard's JSON API answer through this one value.
    queries: Queries,
    quotas: Arc<Quotas>,
    ingest: Arc<IngestState>,
}

impl Core {
    /// The health service, NOT_SERVING until the first database probe
    /// says otherwise, and the task that probes.
    async fn start_health(
        &self,
        tasks: &mut Tasks,
        stop: &CancellationToken,
    ) -> HealthServer<impl Health> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        for service in crate::grpc::health::HEALTH_SERVICES {
            reporter
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        tasks.spawn(
            "health",
            crate::grpc::health::watch_database(
                self.settings.database.url.clone(),
                reporter,
                self.telemetry.clone(),
                self.settings.health_interval,
                stop.clone(),
            ),
        );
        health_service
    }

    /// The key refresh, rollup folding and maintenance loops.
    fn spawn_jobs(&self, tasks: &mut Tasks, stop: &CancellationToken) {
        let settings = &self.settings;
        tasks.spawn(
            "keys",
            self.keys.clone().run(
                self.pools.background.clone(),
                settings.key_refresh_interval,
                stop.clone(),
            ),
        );
        tasks.spawn(
            "fold",
            crate::jobs::fold_rollups(
                self.pools.background.clone(),
                self.telemetry.clone(),
                settings.rollup_interval,
                stop.clone(),
            ),
        );
        tasks.spawn(
            "maintenance",
            crate::jobs::maintenance(
                settings.database.url.clone(),
                settings.maintenance.clone(),
                self.telemetry.clone(),
                stop.clone(),
            ),
        );
    }

    /// The notification hub and its feed, and the evaluator. The hub's
    /// starting point is read before anything is served, so every
    /// notification after it reaches the live feed and every one before it
    /// is in the table for replays.
    async fn start_alerts(
        &self,
        tasks: &mut Tasks,
        engine: Arc<Engine>,
        stop: &CancellationToken,
    ) -> Result<Hub> {
        let settings = &self.settings;
        let hub = Hub::new(
            self.pools.query.clone(),
            self.telemetry.clone(),
            settings.alert_feed_capacity,
            stop.clone(),
        );
        let feed_start = {
            let mut conn = db::connection(&self.pools.background).await?;
            db::alerts::last_notification_id(&mut conn).await?
        };
        tasks.spawn(
            "alert feed",
            hub.clone()
                .listen(settings.database.url.clone(), feed_start),
        );
        tasks.spawn(
            "alert evaluator",
            crate::alerts::evaluator::run(
                EvaluatorSettings {
                    database_url: settings.database.url.clone(),
                    interval: settings.alert_interval,
                    clock: settings.alert_clock.clone(),
                },
                self.pools.background.clone(),
                engine,
                self.telemetry.clone(),
                stop.clone(),
            ),
        );
        Ok(hub)
    }

    /// The query service, the per-key limits and the ingest state.
    fn services(&self, engine: Arc<Engine>) -> Services {
        let settings = &self.settings;
        // Reads go to the replica once it has replayed this instance's last
        // write (see db/replica.rs).
        let write_lsn = self
            .read_pool
            .as_ref()
            .map(|_| Arc::new(WriteLsn::default()));
        let reads = Arc::new(ReadPools::new(
            self.pools.query.clone(),
            self.read_pool.clone(),
            write_lsn.clone().unwrap_or_default(),
            settings.replica_wait,
        ));
        let queries = Queries::new(
            self.pools.query.clone(),
            engine,
            self.telemetry.clone(),
            settings.limits.max_string_bytes,
        )
        .with_reads(reads)
        .with_budget(settings.database.query_timeout);
        let quotas = Quotas::new(settings.quotas.clone(), settings.database.query_timeout);
        let retention_days = settings.maintenance.retention_days;
        let ingest = Arc::new(IngestState {
            pool: self.pools.ingest.clone(),
            cache: IdCache::new(USER_CACHE_ENTRIES),
            telemetry: self.telemetry.clone(),
            limits: settings.limits.clone(),
            write_lsn,
            retention: (retention_days > 0)
                .then(|| chrono::TimeDelta::days(i64::from(retention_days))),
            quotas: quotas.clone(),
            keys: self.keys.clone(),
            memory: IngestMemory::new(settings.limits.ingest_memory_bytes),
        });
        Services {
            queries,
            quotas,
            ingest,
        }
    }

    /// The gRPC server on `listener`, ready to spawn: every layer and
    /// service, serving until `stop`.
    fn grpc_server<H: Health>(
        &self,
        listener: TcpListener,
        tls: Option<&TlsFiles>,
        health: HealthServer<H>,
        hub: Hub,
        services: &Services,
        stop: &CancellationToken,
    ) -> Result<impl Future<Output = Result<(), tonic::transport::Error>> + use<H>> {
        let settings = &self.settings;
        let connections = &settings.connections;
        let tracker = Tracker::new(
            "grpc",
            connections.grpc_max_connections,
            connections,
            self.telemetry.clone(),
        );
        let mut builder = listen::grpc_limits(Server::builder(), connections);
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls.grpc())
                .map_err(|e| Error::InvalidArgument(format!("TLS for gRPC: {e}")))?;
        }
        let (reflection_v1, reflection_v1alpha) = reflection()?;
        let max_message = settings.limits.max_message_bytes;
        let alerts = AlertApi::new(
            self.pools.query.clone(),
            hub,
            settings.limits.max_string_bytes,
            self.keys.clone(),
        );
        Ok(builder
            .layer(TrackLayer)
            .layer(ObserveLayer::new(self.telemetry.clone()))
            .layer(decode_errors::layer::<tonic::body::Body>())
            .layer(DeadlineLayer)
            .layer(AuthLayer::new(self.keys.clone(), services.quotas.clone()))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                IngestServiceServer::new(IngestApi::new(services.ingest.clone()))
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                QueryServiceServer::new(services.queries.clone())
                    .max_decoding_message_size(max_message),
            )
            .add_service(AlertServiceServer::new(alerts).max_decoding_message_size(max_message))
            .serve_with_incoming_shutdown(
                // Admitted under the connection cap and deadlines, with
                // TCP_NODELAY (without it a small response waited ~40 ms
                // for the peer's delayed ACK: p50 48 ms → 1 ms).
                listen::incoming(listener, tracker),
                stop.clone().cancelled_owned(),
            ))
    }

    /// The HTTP server (dashboard, JSON API, `/metrics`) on `listener`,
    /// ready to spawn.
    fn http_server(
        &self,
        listener: TcpListener,
        tls: Option<&TlsFiles>,
        hosts: Arc<AllowedHosts>,
        services: Services,
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<(), std::io::Error>> + use<> {
        let connections = &self.settings.connections;
        let tracker = Tracker::new(
            "http",
            connections.http_max_connections,
            connections,
            self.telemetry.clone(),
        );
        let pools = &self.pools;
        let app = http::router(HttpState {
            telemetry: self.telemetry.clone(),
            pool: pools.query.clone(),
            pools: vec![
                (PoolRole::Ingest, pools.ingest.clone()),
                (PoolRole::Query, pools.query.clone()),
                (PoolRole::Background, pools.background.clone()),
            ],
            query: services.queries,
            keys: self.keys.clone(),
            quotas: services.quotas,
            hosts,
            dashboard: Arc::new(self.settings.dashboard.clone()),
        });
        listen::serve_http(
            listener,
            app,
            tls.map(TlsFiles::http),
            tracker,
            connections.clone(),
            stop.clone(),
        )
    }

    fn close_pools(&self) {
        self.pools.ingest.close();
        self.pools.query.close();
        self.pools.background.close();
        if let Some(read_pool) = &self.read_pool {
            read_pool.close();
        }
    }
}

/// Server reflection, v1 and v1alpha (grpcurl 1.8 speaks only v1alpha).
fn reflection() -> Result<(
    v1::ServerReflectionServer<impl v1::ServerReflection>,
    v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
)> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::internal("reflection", e))?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::internal("reflection", e))?;
    Ok((v1, v1alpha))
}

fn display_addr(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "?".to_owned(), |a| a.to_string())
}

/// The dashboard's URL as a browser on this machine reaches it (a wildcard
/// address such as 0.0.0.0 is reached through loopback).
fn dashboard_url(addr: Option<SocketAddr>, tls: bool) -> String {
    let Some(mut addr) = addr else {
        return "?".to_owned();
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("{}://{addr}/", if tls { "https" } else { "http" })
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::unavailable(format!("cannot bind the {what} listener to {addr}"), e))
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives
/// between the start-up log and the first poll (`App::run` polls it last)
/// still shuts down cleanly instead of killing the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {},
                        _ = terminate.recv() => {},
                    }
                }
                // No handler could be installed: wait for Ctrl-C alone.
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
