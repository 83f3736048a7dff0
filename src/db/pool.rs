//! The connection pools, and creation of the database itself.
//!
//! A server holds three pools on the primary, so that one kind of work can
//! never take the connections of another ([`PoolRole`]): ingest
//! (`IngestEvents`, `UpsertUsers`), queries (`GetMetrics`, the dashboard
//! API, alert rules and `WatchAlerts` replays) and background work (rollup
//! folds, the alert evaluator, API-key reloads). A flood of expensive
//! queries then waits for query connections only, and ingest keeps its own.

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures::FutureExt;

use crate::config::DatabaseSettings;
use crate::error::{Error, Result};

/// A pooled connection.
pub type PooledConnection = Object<AsyncPgConnection>;

/// A pool of connections to one server.
pub type PgPool = Pool<AsyncPgConnection>;

/// What a pool is for: its size, its statement timeout and its
/// `application_name` (visible in `pg_stat_activity`) follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRole {
    /// `IngestEvents` and `UpsertUsers` (`--db-pool-size`).
    Ingest,
    /// Reads for clients (`--db-query-pool-size`), each statement bounded
    /// by the query budget.
    Query,
    /// Folds, the evaluator and key reloads (`--db-background-pool-size`).
    Background,
}

impl PoolRole {
    /// The `pool` label of the pool gauges in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            PoolRole::Ingest => "ingest",
            PoolRole::Query => "query",
            PoolRole::Background => "background",
        }
    }
}

/// Builds the pool of `role` on `url` (the primary's, or a replica's for
/// queries). Connections are opened lazily, so this succeeds even while
/// the database is down; calls then fail with `UNAVAILABLE`.
pub fn build_pool(settings: &DatabaseSettings, url: &str, role: PoolRole) -> Result<PgPool> {
    let (size, statement_timeout) = match role {
        PoolRole::Ingest => (settings.pool_size, settings.statement_timeout),
        // The query budget is enforced per call by the caller (it cancels
        // the statement); the server-side timeout is the backstop, a little
        // later so that the caller's own cancel comes first.
        PoolRole::Query => (
            settings.query_pool_size,
            settings.query_timeout + QUERY_BACKSTOP_MARGIN,
        ),
        PoolRole::Background => (settings.background_pool_size, settings.statement_timeout),
    };
    let statement_timeout_ms = statement_timeout.as_millis().max(1);
    let application_name = format!("pulse-{}", role.label());
    let mut config = ManagerConfig::default();
    // Every statement Pulse runs is short and indexed: launching parallel
    // workers costs more (1-3 ms per Gather) than it saves, and so does JIT
    // compilation (tens of ms for a plan whose estimate crosses
    // jit_above_cost), so both are off.
    // A broken connection is detected by diesel-async itself; a `SELECT 1`
    // on every checkout would cost a round trip per call.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        let application_name = application_name.clone();
        async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            conn.batch_execute(&format!(
                "SET statement_timeout = {statement_timeout_ms}; SET application_name = '{application_name}';
                 SET max_parallel_workers_per_gather = 0; SET jit = off"
            ))
            .await
            .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::new_with_config(url.to_owned(), config);
    Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(settings.pool_timeout))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| Error::internal(format!("building the {} pool", role.label()), e))
}

/// The error of a failed connection to `url`, naming the server (the URL
/// with its password hidden): the driver's own message names neither.
pub fn cannot_connect(url: &str, error: impl std::fmt::Display) -> Error {
    Error::Unavailable(
        format!(
            "cannot connect to PostgreSQL at {}: {error}",
            crate::redact::secrets(url)
        )
        .into(),
    )
}

/// How much later than the query budget the query pool's server-side
/// `statement_timeout` fires.
pub const QUERY_BACKSTOP_MARGIN: Duration = Duration::from_secs(1);

/// Takes a connection from the pool.
pub async fn connection(pool: &PgPool) -> Result<PooledConnection> {
    Ok(pool.get().await?)
}

/// Creates the database named in `url` if it does not exist, connecting to
/// the `postgres` maintenance database of the same server to do so.
pub async fn ensure_database(url: &str) -> Result<()> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::InvalidArgument(format!("invalid database URL: {e}")))?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    if name.is_empty() {
        return Err(Error::InvalidArgument(
            "the database URL names no database (e.g. postgres://postgres@127.0.0.1:5432/pulse)"
                .into(),
        ));
    }
    // The name is spliced into CREATE DATABASE (which takes no bind
    // parameter), so only plain identifiers are accepted.
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::InvalidArgument(format!(
            "database name `{name}` may only hold letters, digits, `_` and `-`"
        )));
    }
    let mut admin_url = parsed.clone();
    admin_url.set_path("/postgres");
    let mut conn = AsyncPgConnection::establish(admin_url.as_str())
        .await
        .map_err(|e| cannot_connect(admin_url.as_str(), e))?;
    if super::server::database_exists(&mut conn, &name).await? {
        return Ok(());
    }
    match conn
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
    {
        Ok(()) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        // Another process created it between our check and our CREATE.
        Err(e) if e.to_string().contains("already exists") => Ok(()),
        Err(e) => Err(Error::Unavailable(
            format!("cannot create database `{name}`: {e}").into(),
        )),
    }
}
