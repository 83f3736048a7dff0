//! The subcommands, each a plain async function over its settings.

use crate::app::{App, shutdown_signal};
use crate::cli::MigrateAction;
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
