//! `ringmq-bench`: a thread-per-core MQTT 3.1.1 load generator.
//!
//! Layout: [`cli`] parses flags; [`workers`] starts one pinned monoio
//! runtime per `--cpus` entry; [`client`] is one MQTT connection;
//! [`scenario`] holds the shared run driver and one file per scenario;
//! [`report`] prints progress and the summary.

mod cli;
mod client;
mod control;
mod cpu;
mod flow;
mod gate;
mod report;
mod scenario;
mod stats;
mod workers;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Scenario};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (result, json) = match &cli.scenario {
        Scenario::Pairs(args) => (scenario::pairs::run(args), args.common.json),
    };
    let summary = match result {
        Ok(summary) => summary,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let printed = if json {
        serde_json::to_writer_pretty(&mut out, &summary)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        summary.print_text(&mut out)
    };
    if let Err(e) = printed {
        eprintln!("error: cannot print the summary: {e}");
        return ExitCode::from(2);
    }
    // Errors make the figures suspect: say so to scripts, too.
    if summary.errors > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
