//! The command line: `pulse serve`, `pulse migrate run|revert|status`,
//! `pulse keys create|list|revoke`, `pulse loadgen`, `pulse demo`.
//!
//! Parsing only; each subcommand's work lives in the module it names.

use clap::{Parser, Subcommand};

use crate::config::{DatabaseSettings, LogSettings, ServeSettings};
use crate::domain::key::Scope;
use crate::loadgen;

/// Pulse: real-time product analytics over gRPC and PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pulse", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogSettings,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if missing, migrate it, and serve gRPC and HTTP.
    Serve(Box<ServeSettings>),
    /// Apply, revert or list schema migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Create, list or revoke API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// GetMetrics latency of the dashboard queries beside plain SQL.
    BenchQueries(Box<crate::bench::BenchQueriesSettings>),
    /// Rollup maintenance.
    Rollups {
        #[command(subcommand)]
        action: RollupsAction,
    },
    /// Send generated events to IngestEvents and report throughput and ack
    /// latency, or write the same events as CSV for `psql \copy`.
    Loadgen(Box<loadgen::LoadgenSettings>),
    /// Start Pulse with synthetic traffic and alert rules, for a live
    /// dashboard in seconds (database `pulse_demo` by default).
    Demo(Box<crate::demo::DemoSettings>),
}

#[derive(Debug, Clone, Subcommand)]
pub enum RollupsAction {
    /// Recompute every rollup from the raw events (blocks ingest while it runs).
    Rebuild {
        #[command(flatten)]
        database: DatabaseSettings,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum MigrateAction {
    /// Apply every pending migration (creates the database if missing).
    Run {
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// Revert the last applied migration, or all of them with --all.
    Revert {
        /// Revert every applied migration.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// List migrations and whether each is applied.
    Status {
        #[command(flatten)]
        database: DatabaseSettings,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysAction {
    /// Create a key and print it, alone, on standard output (shown only
    /// once; only its hash is stored; its id goes to standard error). The
    /// key is committed only once it was written. Creates and migrates the
    /// database if needed.
    Create {
        /// What the key may call: ingest, query or admin (everything).
        #[arg(long, value_parser = parse_scope)]
        scope: Scope,
        /// A name for people: who or what holds the key.
        #[arg(long)]
        name: String,
        /// Create it only if no active key exists; otherwise create nothing
        /// and succeed (first-start automation, e.g. docker-compose.yml).
        #[arg(long = "if-none")]
        if_none: bool,
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// List every key: id, scope, created, last used, revoked, name.
    List {
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// Revoke a key by id; running servers refuse it within seconds.
    Revoke {
        /// The key id, as `pulse keys list` shows it.
        id: uuid::Uuid,
        #[command(flatten)]
        database: DatabaseSettings,
    },
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    Scope::from_name(text).map_err(|e| e.to_string())
}
