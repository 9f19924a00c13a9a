//! The limits against abuse (`max_publish_rate`,
//! `max_publish_byte_rate`, `max_connections_per_address`,
//! `max_connection_rate_per_address`, `flapping_threshold`,
//! `flapping_window`, `flapping_ban`), merged and validated into
//! [`AbuseSettings`]. All off by default.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, FileConfig, ensure};
use crate::abuse::AbuseSettings;
use crate::abuse::flapping::FlappingSettings;
use crate::abuse::publish::PublishLimits;

/// EMQX's window: a minute.
const DEFAULT_FLAPPING_WINDOW: u32 = 60;
/// EMQX's ban: five minutes.
const DEFAULT_FLAPPING_BAN: u32 = 300;
/// Rates are kept in nanoseconds per unit ([`crate::abuse::rate`]).
const MAX_RATE: u64 = 1_000_000_000;

/// The limit flags, flattened into the command line; each is the
/// top-level key of the same name.
#[derive(Debug, Default, Args)]
pub(super) struct AbuseArgs {
    /// PUBLISH packets per second per client; past it the client is read
    /// more slowly, nothing is dropped. 0 is no limit [default: 0].
    #[arg(long, value_name = "N")]
    max_publish_rate: Option<u64>,
    /// PUBLISH bytes (whole packets) per second per client, slowed as
    /// above; 0 is no limit [default: 0].
    #[arg(long, value_name = "BYTES")]
    max_publish_byte_rate: Option<u64>,
    /// Connections open at once from one source address (an IPv6 /64);
    /// more are closed before their CONNECT. 0 is no limit [default: 0].
    #[arg(long, value_name = "N")]
    max_connections_per_address: Option<u32>,
    /// Connection attempts per second from one source address (an IPv6
    /// /64); more are closed before their CONNECT. 0 is no limit
    /// [default: 0].
    #[arg(long, value_name = "N")]
    max_connection_rate_per_address: Option<u64>,
    /// CONNECTs of one client id allowed within --flapping-window; one
    /// more bans the id for --flapping-ban. 0 turns detection off
    /// [default: 0].
    #[arg(long, value_name = "N")]
    flapping_threshold: Option<u32>,
    /// Seconds in which CONNECTs of a client id are counted
    /// [default: 60].
    #[arg(long, value_name = "SECS")]
    flapping_window: Option<u32>,
    /// Seconds a flapping client id is refused, with 0x9F Connection rate
    /// exceeded (v5) or Server unavailable (3.1.1) [default: 300].
    #[arg(long, value_name = "SECS")]
    flapping_ban: Option<u32>,
}

pub(super) fn merge(cli: &AbuseArgs, file: &FileConfig) -> Result<AbuseSettings, ConfigError> {
    let rate = |key, flag: Option<u64>, value: Option<u64>| {
        let rate = flag.or(value).unwrap_or(0);
        ensure(
            rate <= MAX_RATE,
            key,
            &format!("must be between 0 (no limit) and {MAX_RATE}"),
        )
        .map(|()| rate)
    };
    let publish = PublishLimits {
        messages_per_second: rate(
            "max_publish_rate",
            cli.max_publish_rate,
            file.max_publish_rate,
        )?,
        bytes_per_second: rate(
            "max_publish_byte_rate",
            cli.max_publish_byte_rate,
            file.max_publish_byte_rate,
        )?,
    };
    let max_connection_rate_per_address = rate(
        "max_connection_rate_per_address",
        cli.max_connection_rate_per_address,
        file.max_connection_rate_per_address,
    )?;

    let window = cli
        .flapping_window
        .or(file.flapping_window)
        .unwrap_or(DEFAULT_FLAPPING_WINDOW);
    ensure(window >= 1, "flapping_window", "must be at least 1")?;
    let ban = cli
        .flapping_ban
        .or(file.flapping_ban)
        .unwrap_or(DEFAULT_FLAPPING_BAN);
    ensure(ban >= 1, "flapping_ban", "must be at least 1")?;
    let threshold = cli
        .flapping_threshold
        .or(file.flapping_threshold)
        .unwrap_or(0);
    let flapping = (threshold > 0).then(|| FlappingSettings {
        threshold,
        window: Duration::from_secs(window.into()),
        ban: Duration::from_secs(ban.into()),
    });

    Ok(AbuseSettings {
        publish,
        max_connections_per_address: cli
            .max_connections_per_address
            .or(file.max_connections_per_address)
            .unwrap_or(0),
        max_connection_rate_per_address,
        flapping,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{merge as merge_config, parse};
    use super::*;

    #[test]
    fn every_limit_is_off_by_default() {
        assert_eq!(parse(&[]).expect("valid").abuse, AbuseSettings::default());
    }

    #[test]
    fn the_file_sets_every_key_and_flags_override_it() {
        let toml = "max_publish_rate = 100\nmax_publish_byte_rate = 65536\n\
                    max_connections_per_address = 5\nmax_connection_rate_per_address = 10\n\
                    flapping_threshold = 15\nflapping_window = 30\nflapping_ban = 120\n";
        let expected = AbuseSettings {
            publish: PublishLimits {
                messages_per_second: 100,
                bytes_per_second: 65_536,
            },
            max_connections_per_address: 5,
            max_connection_rate_per_address: 10,
            flapping: Some(FlappingSettings {
                threshold: 15,
                window: Duration::from_secs(30),
                ban: Duration::from_secs(120),
            }),
        };
        assert_eq!(merge_config(&[], toml).expect("valid").abuse, expected);

        let flags = [
            "--max-publish-rate",
            "1",
            "--max-publish-byte-rate",
            "2",
            "--max-connections-per-address",
            "3",
            "--max-connection-rate-per-address",
            "4",
            "--flapping-threshold",
            "5",
            "--flapping-window",
            "6",
            "--flapping-ban",
            "7",
        ];
        let abuse = merge_config(&flags, toml).expect("valid").abuse;
        assert_eq!(
            abuse,
            AbuseSettings {
                publish: PublishLimits {
                    messages_per_second: 1,
                    bytes_per_second: 2,
                },
                max_connections_per_address: 3,
                max_connection_rate_per_address: 4,
                flapping: Some(FlappingSettings {
                    threshold: 5,
                    window: Duration::from_secs(6),
                    ban: Duration::from_secs(7),
                }),
            }
        );
    }

    #[test]
    fn flapping_defaults_to_a_minute_and_five_minutes() {
        let flapping = parse(&["--flapping-threshold", "10"])
            .expect("valid")
            .abuse
            .flapping
            .expect("on");
        assert_eq!(flapping.window, Duration::from_secs(60));
        assert_eq!(flapping.ban, Duration::from_secs(300));
    }

    #[test]
    fn bad_values_are_named() {
        let cases: [(&[&str], &str); 5] = [
            (
                &["--max-publish-rate", "1000000001"],
                "invalid value for `max_publish_rate` (--max-publish-rate)",
            ),
            (
                &["--max-publish-byte-rate", "-1"],
                "--max-publish-byte-rate",
            ),
            (
                &["--max-connection-rate-per-address", "2000000000"],
                "invalid value for `max_connection_rate_per_address` (--max-connection-rate-per-address)",
            ),
            (
                &["--flapping-window", "0"],
                "invalid value for `flapping_window` (--flapping-window)",
            ),
            (
                &["--flapping-ban", "0"],
                "invalid value for `flapping_ban` (--flapping-ban)",
            ),
        ];
        for (args, says) in cases {
            let error = parse(args).expect_err("refused").to_string();
            assert!(error.contains(says), "{args:?}: {error}");
        }
        let error = merge_config(&[], "flapping_window = 0\n")
            .expect_err("refused")
            .to_string();
        assert!(error.contains("`flapping_window`"), "{error}");
    }
}
