//! The connection pool, and creation of the database itself.

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

/// The pool every request handler draws from.
pub type PgPool = Pool<AsyncPgConnection>;

/// Builds the pool. Connections are opened lazily, so this succeeds even
/// while the database is down; calls then fail with `UNAVAILABLE`.
pub fn build_pool(settings: &DatabaseSettings) -> Result<PgPool> {
    let statement_timeout_ms = settings.statement_timeout.as_millis();
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
        async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            conn.batch_execute(&format!(
                "SET statement_timeout = {statement_timeout_ms}; SET application_name = 'pulse';
                 SET max_parallel_workers_per_gather = 0; SET jit = off"
            ))
            .await
            .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::new_with_config(settings.url.clone(), config);
    Pool::builder(manager)
        .max_size(settings.pool_size)
        .wait_timeout(Some(settings.pool_timeout))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| Error::Internal(format!("building the connection pool: {e}")))
}

/// The error of a failed connection to `url`, naming the server (the URL
/// with its password hidden): the driver's own message names neither.
pub fn cannot_connect(url: &str, error: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!(
        "cannot connect to PostgreSQL at {}: {error}",
        crate::redact::secrets(url)
    ))
}

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
    if super::admin::database_exists(&mut conn, &name).await? {
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
        Err(e) => Err(Error::Unavailable(format!(
            "cannot create database `{name}`: {e}"
        ))),
    }
}
