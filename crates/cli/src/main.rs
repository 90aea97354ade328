//! `runbox`: the command-line front end. A thin layer: parse flags, call the
//! libraries, print results, map errors to exit codes (see `cli::EXIT_CODES`).

// The command-line front end talks to people on stdout by design.
#![allow(clippy::print_stdout)]

mod build;
mod catalog;
mod cli;
mod error;
mod hostout;
mod image;
mod progress;
mod pull;
mod run;
mod sandbox;
mod script;
mod serve;
mod system;
mod units;
mod worker;
mod workers;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use runbox_core::ErrorCode;
use runbox_image::{Store, StoreOptions};

use crate::cli::{Cli, Command};

/// How a command ended.
#[derive(Debug)]
pub enum Exit {
    Ok,
    /// `runbox run`: the program's status.
    Code(u8),
}

/// Prints one JSON document on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn main() -> ExitCode {
    let wants_json = std::env::args().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if wants_json {
                let body = runbox_core::ErrorBody {
                    code: ErrorCode::InvalidArgument,
                    message: e.kind().to_string() + ": " + &e.to_string(),
                };
                let _ = print_json(&serde_json::json!({ "error": body }));
            } else {
                let _ = e.print();
            }
            return ExitCode::from(ErrorCode::InvalidArgument.exit_code());
        }
    };
    let level = cli.log.clone().unwrap_or_else(|| {
        if matches!(cli.command, Command::Serve(_) | Command::Worker(_)) {
            "info"
        } else {
            "warn"
        }
        .to_owned()
    });
    init_logging(&level, cli.log_format);
    match dispatch(cli) {
        Ok(Exit::Ok) => ExitCode::SUCCESS,
        Ok(Exit::Code(c)) => ExitCode::from(c),
        Err(err) => {
            let body = error::body(&err);
            if wants_json {
                let _ = print_json(&serde_json::json!({ "error": body }));
            } else {
                eprintln!("runbox: error: {}", body.message);
                if let Some(h) = error::hint(body.code) {
                    eprintln!("runbox: hint: {h}");
                }
            }
            ExitCode::from(body.code.exit_code())
        }
    }
}

fn init_logging(level: &str, format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        cli::LogFormat::Text => fmt.try_init(),
        cli::LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

fn dispatch(cli: Cli) -> anyhow::Result<Exit> {
    if matches!(cli.command, Command::Run(_)) {
        // The job's network namespace is the slowest part of a sandbox to create:
        // start it now, while the store is opened and the job planned.
        runbox_sandbox::NetnsPool::global().make_ahead(1);
    }
    match cli.command {
        Command::Run(args) => run::run(&cli.data_dir, cli.catalog.as_deref(), *args),
        Command::Serve(args) => serve::run(&cli.data_dir, cli.catalog.as_deref(), *args),
        Command::Image(cmd) => {
            image::run(&Store::open(&cli.data_dir, StoreOptions::default())?, cmd)
        }
        Command::Script(args) => script::run(
            &cli.data_dir,
            catalog::load(&cli.data_dir, cli.catalog.as_deref())?,
            args,
        ),
        Command::Programs(args) => catalog::programs(
            &*catalog::load(&cli.data_dir, cli.catalog.as_deref())?,
            args,
        ),
        Command::Worker(args) => worker::run(&cli.data_dir, cli.catalog.as_deref(), *args),
        Command::Workers(args) => workers::run(&cli.data_dir, args),
        Command::System(cmd) => system::run(&cli.data_dir, cli.catalog.as_deref(), cmd),
        Command::Sandbox(args) => sandbox::run(&cli.data_dir, *args),
        Command::Catalog(cmd) => catalog::run(
            &cli.data_dir,
            catalog::load(&cli.data_dir, cli.catalog.as_deref())?,
            cmd,
        ),
    }
}
