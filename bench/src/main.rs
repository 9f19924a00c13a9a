//! `ringmq-bench`: a thread-per-core MQTT 3.1.1 load generator.
//!
//! Layout: [`cli`] parses flags; [`workers`] starts one pinned monoio
//! runtime per `--cpus` entry; [`client`] is one MQTT connection;
//! [`scenario`] holds the shared run driver and one file per scenario;
//! [`report`] prints progress and the summary of the publish/subscribe
//! scenarios, [`stresser_report`] mqtt-stresser's report. The `store`
//! scenario needs no broker: it measures embedded stores for durable sessions.

mod cli;
mod client;
mod control;
mod cpu;
mod flow;
mod gate;
mod report;
mod scenario;
mod stats;
mod stresser_report;
mod tls;
mod workers;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use serde::Serialize;

use cli::{Cli, Layout, Scenario};

fn main() -> ExitCode {
    let cli = Cli::parse_from(cli::normalize_args(std::env::args()));
    match &cli.scenario {
        Scenario::Pairs(args) => finish(scenario::pairs::run(args), args.common.json),
        Scenario::Pubsub(args) => {
            let result = match args.layout {
                Layout::Pairs if args.subscribers() != args.publishers => {
                    Err("--layout pairs needs as many subscribers as publishers".to_owned())
                }
                Layout::Pairs => scenario::pairs::run(&args.as_pairs()),
                Layout::FanIn | Layout::FanOut => scenario::fan::run(args),
            };
            finish(result, args.common.json)
        }
        Scenario::Stresser(args) => finish(scenario::stresser::run(args), args.json),
        Scenario::Subscribe(args) => finish(scenario::subscribe::run(args), args.json),
        Scenario::Takeover(args) => finish(scenario::takeover::run(args), args.json),
        Scenario::Sessions(args) => finish(scenario::sessions::run(args), args.json),
        Scenario::Conn(args) if args.child.is_some() => match scenario::conn::child(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        },
        Scenario::Conn(args) => finish(scenario::conn::run(args), args.json),
        Scenario::Store(args) if args.fill_only => {
            match scenario::store::restore::fill_only(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::from(2)
                }
            }
        }
        Scenario::Store(args) if args.restore => {
            finish(scenario::store::restore::run(args), args.json)
        }
        Scenario::Store(args) => finish(scenario::store::run(args), args.json),
    }
}

/// What every scenario's result can do.
trait Outcome: Serialize {
    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()>;
    /// Errors make the figures suspect: the exit code says so to scripts.
    fn errors(&self) -> u64;
}

impl Outcome for report::Summary {
    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        report::Summary::print_text(self, out)
    }
    fn errors(&self) -> u64 {
        self.errors
    }
}

impl Outcome for stresser_report::StresserReport {
    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        stresser_report::StresserReport::print_text(self, out)
    }
    fn errors(&self) -> u64 {
        self.errors
    }
}

impl Outcome for scenario::subscribe::SubscribeReport {
    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        scenario::subscribe::SubscribeReport::print_text(self, out)
    }
    fn errors(&self) -> u64 {
        self.runs.errors
    }
}

impl Outcome for scenario::takeover::TakeoverReport {
    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        scenario::takeover::TakeoverReport::print_text(self, out)
    }
    fn errors(&self) -> u64 {
        self.runs.errors
    }
}

impl Outcome for scenario::sessions::SessionsReport {
    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        scenario::sessions::SessionsReport::print_text(self, out)
    }
    fn errors(&self) -> u64 {
        self.errors
    }
}

impl Outcome for scenario::conn::ConnReport {
    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        scenario::conn::ConnReport::print_text(self, out)
    }
    fn errors(&self) -> u64 {
        self.errors
    }
}

impl Outcome for scenario::store::StoreReport {
    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        scenario::store::StoreReport::print_text(self, out)
    }
    fn errors(&self) -> u64 {
        self.errors
    }
}

impl Outcome for scenario::store::restore::RestoreReport {
    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        scenario::store::restore::RestoreReport::print_text(self, out)
    }
    fn errors(&self) -> u64 {
        self.errors
    }
}

/// Prints the outcome as text or JSON; exit code 1 if it had errors, 2 if
/// the run could not start.
fn finish(result: Result<impl Outcome, String>, json: bool) -> ExitCode {
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let printed = if json {
        serde_json::to_writer_pretty(&mut out, &outcome)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        outcome.print_text(&mut out)
    };
    if let Err(e) = printed {
        eprintln!("error: cannot print the summary: {e}");
        return ExitCode::from(2);
    }
    if outcome.errors() > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
