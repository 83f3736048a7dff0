//! The subcommands, each a plain async function over its settings.

use crate::app::{App, shutdown_signal};
use crate::cli::{KeysAction, MigrateAction, RollupsAction};
use crate::config::ServeSettings;
use crate::db;
use crate::error::Result;

/// `pulse serve`: runs until SIGINT/SIGTERM.
pub async fn serve(settings: ServeSettings) -> Result<()> {
    let app = App::build(settings).await?;
    app.run(shutdown_signal()).await
}

/// `pulse migrate run|revert|status`.
pub async fn migrate(action: MigrateAction) -> Result<()> {
    match action {
        MigrateAction::Run { database } => {
            db::ensure_database(&database.url).await?;
            let applied = db::migrations::run_pending(&database.url).await?;
            if applied.is_empty() {
                println!("nothing to apply: the schema is up to date");
            }
            for version in applied {
                println!("applied {version}");
            }
        }
        MigrateAction::Revert { all, database } => {
            for version in db::migrations::revert(&database.url, all).await? {
                println!("reverted {version}");
            }
        }
        MigrateAction::Status { database } => {
            for migration in db::migrations::status(&database.url).await? {
                let state = if migration.applied {
                    "applied"
                } else {
                    "pending"
                };
                println!("{state:8} {}", migration.version);
            }
        }
    }
    Ok(())
}

/// `pulse keys create|list|revoke`. Each opens one connection of its own;
/// `create` first creates and migrates the database, like `serve`, so the
/// first key can exist before the first start.
pub async fn keys(action: KeysAction) -> Result<()> {
    use crate::domain::key::{NewKey, validate_name};
    use diesel_async::{AsyncConnection, AsyncPgConnection};

    let connect = |url: String| async move {
        AsyncPgConnection::establish(&url)
            .await
            .map_err(|e| db::cannot_connect(&url, e))
    };
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
    };
    match action {
        KeysAction::Create {
            scope,
            name,
            if_none,
            database,
        } => {
            let name = validate_name(&name)?;
            db::ensure_database(&database.url).await?;
            db::migrations::run_pending(&database.url).await?;
            let mut conn = connect(database.url).await?;
            if if_none && !db::keys::active(&mut conn).await?.is_empty() {
                println!("an active API key exists already (`pulse keys list`): none created");
                return Ok(());
            }
            let key = NewKey::generate();
            let id = db::keys::create(&mut conn, name, scope, &key.hash).await?;
            println!("created API key {id} ({}, scope {})", name, scope.as_str());
            println!("send it as `authorization: Bearer <key>`; it is shown only this once:");
            println!("{}", key.secret);
        }
        KeysAction::List { database } => {
            let mut conn = connect(database.url).await?;
            println!(
                "{:36}  {:6}  {:20}  {:20}  {:20}  name",
                "id", "scope", "created", "last used", "revoked"
            );
            for key in db::keys::list(&mut conn).await? {
                println!(
                    "{:36}  {:6}  {:20}  {:20}  {:20}  {}",
                    key.id,
                    key.scope,
                    when(Some(key.created_at)),
                    when(key.last_used_at),
                    when(key.revoked_at),
                    key.name
                );
            }
        }
        KeysAction::Revoke { id, database } => {
            let mut conn = connect(database.url).await?;
            let key = db::keys::revoke(&mut conn, id).await?;
            println!(
                "revoked API key {} ({}) at {}; servers refuse it within seconds",
                key.id,
                key.name,
                when(key.revoked_at)
            );
        }
    }
    Ok(())
}

/// `pulse rollups rebuild`.
pub async fn rollups(action: RollupsAction) -> Result<()> {
    match action {
        RollupsAction::Rebuild { database } => {
            use diesel_async::AsyncConnection;
            let mut conn = diesel_async::AsyncPgConnection::establish(&database.url)
                .await
                .map_err(|e| db::cannot_connect(&database.url, e))?;
            let started = std::time::Instant::now();
            let mut report = |day: chrono::DateTime<chrono::Utc>, rows: u64| {
                println!("{}  {rows} delta rows folded", day.format("%Y-%m-%d"));
            };
            let total = db::rollups::rebuild(&mut conn, &mut report).await?;
            println!(
                "rebuilt rollups: {total} delta rows in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
