use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use sockwatch_tui::{
    app, check,
    cli::{Args, Command},
    kernel::support::ProbeError,
};

fn main() -> ExitCode {
    let args = Args::parse().checked().unwrap_or_else(|error| error.exit());
    match args.command {
        Some(Command::Check) => {
            let report = check::run();
            print!("{}", report.text());
            return if report.usable {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Some(Command::Completions { shell }) => {
            // Generated whole first: clap_complete panics on a write that fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Args::command(), "sockwatch-tui", &mut script);
            return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("sockwatch-tui: writing the completions: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Man) => {
            return match clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout()) {
                // A pager or `head` that stopped reading has what it wanted.
                Ok(()) => ExitCode::SUCCESS,
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("sockwatch-tui: writing the man page: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
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
            // One line: the error and its causes; where the kernel or the privileges were the
            // problem, where to learn more.
            let hint = if error.downcast_ref::<ProbeError>().is_some() {
                " (`sockwatch-tui check` says what this machine offers)"
            } else {
                ""
            };
            eprintln!("sockwatch-tui: {error:#}{hint}");
            ExitCode::FAILURE
        }
    }
}
