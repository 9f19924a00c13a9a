//! The `ringmq` binary: parse the configuration, start the shards, wait;
//! or, with `cluster-certs`, write cluster certificates and exit; or, with
//! `passwd`, edit a password file and exit.

use std::process::ExitCode;
use std::sync::Arc;

use ringmq::abuse::AbuseLimits;
use ringmq::auth::Authenticator;
use ringmq::auth::passwd::{self, PasswdAction};

use ringmq::cluster::tls;
use ringmq::config::{Command, ConfigError, LogFormat};
use ringmq::shard::{self, ConnectionLimit, OpenFilesFit, ServerConfig, ShardConfig};

fn main() -> ExitCode {
    let config = match Command::from_args(std::env::args_os()) {
        Ok(Command::Serve(config)) => config,
        Ok(Command::ClusterCerts { out, nodes }) => return cluster_certs(&out, &nodes),
        Ok(Command::Passwd { file, user, action }) => return passwd(&file, &user, &action),
        // clap prints help, version and its own errors, with the right status.
        Err(ConfigError::Cli(error)) => error.exit(),
        Err(error) => {
            eprintln!("ringmq: {error}");
            return ExitCode::from(2);
        }
    };
    // The store's engine narrates every database it opens at info, and
    // openraft every vote, election and membership step; their warnings
    // and errors are what an operator needs (ringmq logs the ownership
    // raft's milestones itself). rustls warns about what clients send
    // (an IP address as SNI, as OpenSSL-based clients do), once per
    // connection: a client could fill the log; ringmq counts and logs
    // failed handshakes itself.
    let level = config.log_level.level_filter();
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "{level},fjall={quiet},lsm_tree={quiet},openraft={quiet},rustls={peers}",
        quiet = level.min(tracing::level_filters::LevelFilter::WARN),
        peers = level.min(tracing::level_filters::LevelFilter::ERROR)
    ));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }

    let auth = match Authenticator::start(&config.auth) {
        Ok(auth) => Arc::new(auth),
        Err(error) => {
            tracing::error!(%error, "cannot start the password verifier threads");
            return ExitCode::FAILURE;
        }
    };
    let server = ServerConfig {
        listeners: config.listeners.clone(),
        shards: config.cores,
        io_driver: config.io_driver,
        shard: ShardConfig {
            session: config.session_config(),
            max_packet_size: config.max_packet_size as usize,
            shared_strategy: config.shared_subscription_strategy,
            connections: ConnectionLimit::new(connections_within_open_files(
                config.max_connections,
                config.cores,
            )),
            connect_timeout: config.connect_timeout(),
            park_after: config.park_after(),
            max_client_id_length: usize::from(config.max_client_id_length),
            auth,
            abuse: AbuseLimits::new(&config.abuse),
        },
        metrics_listen: config.metrics_listen,
        sys_interval: (config.sys_interval > 0)
            .then(|| std::time::Duration::from_secs(config.sys_interval)),
        cluster: config.cluster.clone(),
        store: config.store.clone(),
    };
    match shard::run(server) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            ExitCode::FAILURE
        }
    }
}

/// `max_connections`, lowered (and said so) where the open-file limit would
/// otherwise leave clients past it waiting unanswered in the accept queue.
fn connections_within_open_files(configured: usize, shards: usize) -> usize {
    let open_files = match shard::raise_open_file_limit() {
        Ok(open_files) => open_files,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit (RLIMIT_NOFILE)");
            return configured;
        }
    };
    match shard::fit_to_open_files(configured, open_files, shards) {
        OpenFilesFit::Fits(max) => max,
        OpenFilesFit::Lowered {
            configured,
            to,
            open_files,
        } => {
            tracing::warn!(
                max_connections = configured,
                lowered_to = to,
                open_files,
                "max_connections (0: no limit) does not fit the open-file limit \
                 (ulimit -n, systemd LimitNOFILE): lowered, so that clients past it \
                 are refused with a CONNACK rather than left waiting unaccepted"
            );
            to
        }
    }
}

/// `ringmq cluster-certs`: the files written, one path a line on stdout so
/// that a script can use them.
fn cluster_certs(out: &std::path::Path, nodes: &[String]) -> ExitCode {
    match tls::write_cluster_certs(out, nodes) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ringmq cluster-certs: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `ringmq passwd`: what was done on stdout, an error on stderr.
fn passwd(file: &std::path::Path, user: &str, action: &PasswdAction) -> ExitCode {
    match passwd::run(file, user, action) {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ringmq passwd: {error}");
            ExitCode::FAILURE
        }
    }
}
