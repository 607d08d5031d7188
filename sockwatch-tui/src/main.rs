use std::process::ExitCode;

use clap::Parser;
use sockwatch_tui::{app, cli::Args};

fn main() -> ExitCode {
    let args = Args::parse().checked().unwrap_or_else(|error| error.exit());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sockwatch-tui: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the error and its causes.
            eprintln!("sockwatch-tui: {error:#}");
            ExitCode::FAILURE
        }
    }
}
