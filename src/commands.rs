//! The subcommands, each a plain async function over its settings.
//!
//! Results go to standard output through [`out`], which never panics: a
//! closed pipe (`pulse keys list | head -1`) becomes an error and a non-zero
//! exit, where `println!` would abort with exit 101. Text that came from
//! the database (key names, which people type) is escaped with
//! [`escape_control`] so it cannot forge a row or recolour the terminal.

use std::fmt::Display;
use std::io::Write;

use anyhow::Context;
use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::app::{App, shutdown_signal};
use crate::cli::{KeysAction, MigrateAction, RollupsAction};
use crate::config::ServeSettings;
use crate::db;
use crate::domain::key::{NewKey, Scope, validate_name};
use crate::error::{Error, Result};
use crate::text::escape_control;

/// Writes one line of a command's result to standard output and flushes it.
pub fn out(line: impl Display) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::unavailable("cannot write to standard output", e))
}

/// Writes a note for people to standard error; a closed stderr is ignored.
pub fn note(line: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `pulse serve`: runs until SIGINT/SIGTERM.
pub async fn serve(settings: ServeSettings) -> anyhow::Result<()> {
    let app = App::build(settings)
        .await
        .context("pulse could not start")?;
    app.run(shutdown_signal()).await
}

/// `pulse migrate run|revert|status`.
pub async fn migrate(action: MigrateAction) -> anyhow::Result<()> {
    match action {
        MigrateAction::Run { database } => {
            db::ensure_database(&database.url).await?;
            let applied = db::migrations::run_pending(&database.url).await?;
            if applied.is_empty() {
                out("nothing to apply: the schema is up to date")?;
            }
            for version in applied {
                out(format_args!("applied {}", escape_control(&version)))?;
            }
        }
        MigrateAction::Revert { all, database } => {
            for version in db::migrations::revert(&database.url, all).await? {
                out(format_args!("reverted {}", escape_control(&version)))?;
            }
        }
        MigrateAction::Status { database } => {
            for migration in db::migrations::status(&database.url).await? {
                let state = if migration.applied {
                    "applied"
                } else {
                    "pending"
                };
                out(format_args!(
                    "{state:8} {}",
                    escape_control(&migration.version)
                ))?;
            }
        }
    }
    Ok(())
}

/// `pulse keys create|list|revoke`. Each opens one connection of its own;
/// `create` first creates and migrates the database, like `serve`, so the
/// first key can exist before the first start.
pub async fn keys(action: KeysAction) -> anyhow::Result<()> {
    match action {
        KeysAction::Create {
            scope,
            name,
            if_none,
            database,
        } => create_key(&database.url, &name, scope, if_none).await,
        KeysAction::List { database } => list_keys(&database.url).await,
        KeysAction::Revoke { id, database } => {
            let mut conn = connect(&database.url).await?;
            let key = db::keys::revoke(&mut conn, id).await?;
            out(format_args!(
                "revoked API key {} ({}) at {}; servers refuse it within seconds",
                key.id,
                escape_control(&key.name),
                when(key.revoked_at)
            ))?;
            Ok(())
        }
    }
}

/// One connection of a command's own.
async fn connect(url: &str) -> Result<AsyncPgConnection> {
    AsyncPgConnection::establish(url)
        .await
        .map_err(|e| db::cannot_connect(url, e))
}

/// A time as the key table prints it, or `-`.
fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// `pulse keys create`: prints the key, alone, as the only line on
/// standard output, and commits it only once that line is written: a key
/// that could not be shown (a closed pipe) is rolled back, so no key exists
/// that nobody saw. Its id and the advice go to standard error, after the
/// commit.
async fn create_key(url: &str, name: &str, scope: Scope, if_none: bool) -> anyhow::Result<()> {
    let name = validate_name(name)?;
    db::ensure_database(url).await?;
    db::migrations::run_pending(url).await?;
    let mut conn = connect(url).await?;
    if if_none && !db::keys::active(&mut conn).await?.is_empty() {
        note(format_args!(
            "an active API key exists already (`pulse keys list`): none created"
        ));
        return Ok(());
    }
    let key = NewKey::generate();
    let id = conn
        .transaction::<_, Error, _>(async |conn| {
            let id = db::keys::create(conn, name, scope, &key.hash).await?;
            out(&key.secret)
                .map_err(|e| Error::Unavailable(format!("{e}; the key was not created").into()))?;
            Ok(id)
        })
        .await?;
    note(format_args!(
        "created API key {id} ({}, scope {}): the key printed above is shown only this once; \
         send it as `authorization: Bearer <key>`",
        escape_control(name),
        scope.as_str()
    ));
    Ok(())
}

/// `pulse keys list`: one row per key, revoked ones too.
async fn list_keys(url: &str) -> anyhow::Result<()> {
    let mut conn = connect(url).await?;
    out(format_args!(
        "{:36}  {:6}  {:20}  {:20}  {:20}  name",
        "id", "scope", "created", "last used", "revoked"
    ))?;
    for key in db::keys::list(&mut conn).await? {
        out(format_args!(
            "{:36}  {:6}  {:20}  {:20}  {:20}  {}",
            key.id,
            escape_control(&key.scope),
            when(Some(key.created_at)),
            when(key.last_used_at),
            when(key.revoked_at),
            escape_control(&key.name)
        ))?;
    }
    Ok(())
}

/// `pulse rollups rebuild`.
pub async fn rollups(action: RollupsAction) -> anyhow::Result<()> {
    match action {
        RollupsAction::Rebuild { database } => {
            let mut conn = connect(&database.url).await?;
            let started = std::time::Instant::now();
            // Progress only: a closed stdout must not stop the rebuild.
            let mut report = |day: chrono::DateTime<chrono::Utc>, rows: u64| {
                let _ = out(format_args!(
                    "{}  {rows} delta rows folded",
                    day.format("%Y-%m-%d")
                ));
            };
            let total = db::rollups::rebuild(&mut conn, &mut report).await?;
            out(format_args!(
                "rebuilt rollups: {total} delta rows in {:.1} s",
                started.elapsed().as_secs_f64()
            ))?;
        }
    }
    Ok(())
}
