//! Schema migrations: the only way the schema changes.
//!
//! The SQL lives in `migrations/` and is embedded into the binary at compile
//! time (`build.rs` reruns when that folder changes). Diesel's migration
//! harness is synchronous, so it runs on a blocking thread through
//! diesel-async's `AsyncConnectionWrapper`.

use diesel::migration::MigrationVersion;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::{Error, Result};

/// Every migration of this build.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

type Wrapper = AsyncConnectionWrapper<AsyncPgConnection>;

/// One migration and whether it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    pub version: String,
    pub applied: bool,
}

async fn with_harness<T, F>(url: &str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Wrapper) -> Result<T> + Send + 'static,
{
    use diesel::Connection;
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = Wrapper::establish(&url).map_err(|e| super::cannot_connect(&url, e))?;
        work(&mut conn)
    })
    .await
    .map_err(|e| Error::internal("migration task failed", e))?
}

fn migration_error(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("migration failed: {e}").into())
}

/// Applies every pending migration; returns the versions applied.
pub async fn run_pending(url: &str) -> Result<Vec<String>> {
    with_harness(url, |conn| {
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(migration_error)?;
        Ok(applied.iter().map(MigrationVersion::to_string).collect())
    })
    .await
}

/// Reverts the last applied migration, or every one with `all`.
pub async fn revert(url: &str, all: bool) -> Result<Vec<String>> {
    with_harness(url, move |conn| {
        if all {
            let reverted = conn
                .revert_all_migrations(MIGRATIONS)
                .map_err(migration_error)?;
            Ok(reverted.iter().map(MigrationVersion::to_string).collect())
        } else {
            let reverted = conn
                .revert_last_migration(MIGRATIONS)
                .map_err(migration_error)?;
            Ok(vec![reverted.to_string()])
        }
    })
    .await
}

/// Lists every migration of this build with its state.
pub async fn status(url: &str) -> Result<Vec<MigrationState>> {
    with_harness(url, |conn| {
        let applied: Vec<String> = conn
            .applied_migrations()
            .map_err(migration_error)?
            .iter()
            .map(MigrationVersion::to_string)
            .collect();
        let mut all: Vec<MigrationState> =
            diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
                .map_err(migration_error)?
                .iter()
                .map(|m| {
                    let version = m.name().version().to_string();
                    MigrationState {
                        applied: applied.contains(&version),
                        version,
                    }
                })
                .collect();
        all.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(all)
    })
    .await
}

/// Versions that this build knows but the database has not applied.
pub async fn pending(url: &str) -> Result<Vec<String>> {
    Ok(status(url)
        .await?
        .into_iter()
        .filter(|m| !m.applied)
        .map(|m| m.version)
        .collect())
}

/// Versions this build knows that the database behind `conn` has not
/// applied, read over an async connection (no blocking thread), for the
/// readiness probe. A database never migrated has every version pending.
pub async fn pending_on(conn: &mut AsyncPgConnection) -> Result<Vec<String>> {
    use diesel::QueryableByName;
    use diesel::sql_types::{Bool, Text};
    use diesel_async::RunQueryDsl;

    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = Bool)]
        exists: bool,
    }
    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = Text)]
        version: String,
    }
    let table: Exists =
        diesel::sql_query("SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS exists")
            .get_result(conn)
            .await?;
    let applied: Vec<String> = if table.exists {
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load::<Version>(conn)
            .await?
            .into_iter()
            .map(|v| v.version)
            .collect()
    } else {
        Vec::new()
    };
    let mut pending: Vec<String> =
        diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
            .map_err(migration_error)?
            .iter()
            .map(|m| m.name().version().to_string())
            .filter(|version| !applied.contains(version))
            .collect();
    pending.sort();
    Ok(pending)
}
