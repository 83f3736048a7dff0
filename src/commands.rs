//! The subcommands, each a plain async function over its settings.

use crate::app::{App, shutdown_signal};
use crate::cli::{MigrateAction, RollupsAction};
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

/// `pulse rollups rebuild`.
pub async fn rollups(action: RollupsAction) -> Result<()> {
    match action {
        RollupsAction::Rebuild { database } => {
            use diesel_async::AsyncConnection;
            let mut conn = diesel_async::AsyncPgConnection::establish(&database.url)
                .await
                .map_err(|e| {
                    crate::error::Error::Unavailable(format!("cannot connect to PostgreSQL: {e}"))
                })?;
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
