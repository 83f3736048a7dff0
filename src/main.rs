//! The `pulse` binary: parse the command line, start logging, run the
//! chosen subcommand.

use std::process::ExitCode;

use clap::Parser;
use pulse::cli::{Cli, Command};
use pulse::{commands, loadgen, telemetry};

/// See `Cargo.toml` `[features]`: memory freed by a burst (a big fold, a
/// wide query) goes back to the system instead of staying in the process.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_e` values (v3, `mimalloc.h`) that Pulse sets; the
/// sys crate does not name them. A test checks them against their defaults.
#[cfg(feature = "mimalloc")]
mod allocator {
    use libmimalloc_sys::{mi_option_set, mi_option_t};

    /// Commit an arena's memory when reserved (default 2: on Linux).
    pub const ARENA_EAGER_COMMIT: mi_option_t = 4;
    /// Milliseconds before freed memory goes back to the system (default
    /// 1,000; ten times that for whole arenas).
    pub const PURGE_DELAY: mi_option_t = 15;

    /// Freed memory goes back at once and arenas are committed as used:
    /// after a burst (a fold, a wide query, big messages) RSS falls back
    /// instead of staying up for seconds. Measured in docs/benchmarks.md
    /// ("Allocator options"); `MIMALLOC_PURGE_DELAY` and
    /// `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still win.
    pub fn tune() {
        for (option, name) in [
            (PURGE_DELAY, "MIMALLOC_PURGE_DELAY"),
            (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT"),
        ] {
            if std::env::var_os(name).is_none() {
                // SAFETY: sets one integer option; mimalloc reads options
                // atomically, so this is sound at any time.
                unsafe { mi_option_set(option, 0) };
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    #[cfg(feature = "mimalloc")]
    allocator::tune();
    let cli = Cli::parse();
    telemetry::init_logging(&cli.log);
    let result = match cli.command {
        Command::Serve(settings) => commands::serve(*settings).await,
        Command::Migrate { action } => commands::migrate(action).await,
        Command::Keys { action } => commands::keys(action).await,
        Command::Rollups { action } => commands::rollups(action).await,
        Command::BenchQueries(settings) => pulse::bench::run(*settings).await.map_err(Into::into),
        Command::Loadgen(settings) => loadgen::run(*settings).await.map_err(Into::into),
        Command::Demo(settings) => pulse::demo::run(*settings).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Never a panic, even with stderr closed; an error may quote a
            // database URL: never its password.
            // `{:#}`: the error and each cause, "context: cause: cause".
            commands::note(format_args!(
                "pulse: {}",
                pulse::redact::secrets(&format!("{error:#}"))
            ));
            ExitCode::FAILURE
        }
    }
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::allocator::{ARENA_EAGER_COMMIT, PURGE_DELAY};

    fn get(option: libmimalloc_sys::mi_option_t) -> std::ffi::c_long {
        // SAFETY: reads one integer option.
        unsafe { libmimalloc_sys::mi_option_get(option) }
    }

    /// The option numbers name the options meant: their defaults are
    /// mimalloc v3's (the test process never calls `tune`).
    #[test]
    fn allocator_option_numbers_match_their_defaults() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(PURGE_DELAY), 1000);
        }
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            assert_eq!(get(ARENA_EAGER_COMMIT), 2);
        }
    }
}
