//! Command line: one subcommand per scenario, sharing [`CommonArgs`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ringmq::protocol::QoS;

#[derive(Debug, Parser)]
#[command(
    name = "ringmq-bench",
    version,
    about = "Thread-per-core MQTT 3.1.1 load generator"
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// N subscriber/publisher pairs, each pair on its own topic `bench/pair/N`.
    Pairs(PairsArgs),
}

/// Flags every scenario understands.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Broker address (host:port).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// CPUs to pin worker threads to, one thread per entry: `1`, `0,1`, `0-3`.
    #[arg(long, default_value = "0", value_parser = parse_cpus)]
    pub cpus: CpuList,
    /// Measured window, after the warmup: `10s`, `500ms`, `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publishing before the measured window; not counted in rates or latency.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// After the window, how long to wait for messages still in flight.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Most handshakes (connect, and subscribe) in progress at once, over
    /// all workers; keeps a connection storm within the broker's backlog.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,
    /// Print the summary as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Broker process id: its CPU time over the measured window is read from
    /// /proc/PID/stat and reported per delivered message.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct PairsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Number of pairs (connections = 2 x pairs).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub pairs: u32,
    /// QoS of the publishes and the subscriptions: 0, 1 or 2.
    #[arg(long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Payload bytes per message; the first 8 carry the send timestamp.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=16_777_216))]
    pub payload: u32,
    /// Messages per second per publisher; 0 publishes as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// QoS 1/2: unacknowledged publishes a publisher may have outstanding.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Most messages a publisher may be ahead of its subscriber (sent but
    /// not yet received); 0 publishes open-loop, however far the broker
    /// falls behind.
    #[arg(long, default_value_t = 500)]
    pub max_lag: u32,
    /// Most PUBLISH packets coalesced into one write.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
}

/// The CPUs worker threads are pinned to, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// `1`, `0,1`, `0-3`, `0-1,4`.
pub fn parse_cpus(text: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{s}` is not a CPU number"))
        };
        match part.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (parse(low)?, parse(high)?);
                if low > high {
                    return Err(format!("empty CPU range `{part}`"));
                }
                cpus.extend(low..=high);
            }
            None => cpus.push(parse(part)?),
        }
    }
    let mut sorted = cpus.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != cpus.len() {
        return Err("a CPU is listed twice".into());
    }
    Ok(CpuList(cpus))
}

/// `10s`, `500ms`, `2m`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 10s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

pub fn parse_qos(text: &str) -> Result<QoS, String> {
    text.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("QoS must be 0, 1 or 2, not `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("1"), Ok(CpuList(vec![1])));
        assert_eq!(parse_cpus("0,1"), Ok(CpuList(vec![0, 1])));
        assert_eq!(parse_cpus("0-2,5"), Ok(CpuList(vec![0, 1, 2, 5])));
        assert!(parse_cpus("1,1").is_err());
        assert!(parse_cpus("2-1").is_err());
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "ringmq-bench",
            "pairs",
            "--cpus",
            "0,1",
            "--qos",
            "1",
            "--duration",
            "3s",
        ])
        .expect("valid command line");
        let Scenario::Pairs(args) = cli.scenario;
        assert_eq!(args.common.cpus, CpuList(vec![0, 1]));
        assert_eq!(args.qos, QoS::AtLeastOnce);
        assert_eq!(args.pairs, 100);
    }
}
