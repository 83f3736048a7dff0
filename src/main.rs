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

#[tokio::main]
async fn main() -> ExitCode {
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
