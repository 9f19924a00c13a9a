//! The configuration's own tests: defaults, the file, flags over the
//! file, errors by name, and the deploy example.

use clap::error::ErrorKind;

use super::*;

pub(super) fn tcp(address: &str, proxy_protocol: bool) -> ListenerConfig {
    ListenerConfig {
        address: address.parse().expect("literal"),
        transport: Transport::Tcp,
        proxy_protocol,
        tls: None,
    }
}

pub(super) fn websocket(address: &str, proxy_protocol: bool) -> ListenerConfig {
    ListenerConfig {
        transport: Transport::WebSocket,
        ..tcp(address, proxy_protocol)
    }
}

pub(super) fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    Config::from_args(std::iter::once("ringmq").chain(args.iter().copied()))
}

pub(super) fn merge(args: &[&str], toml: &str) -> Result<Config, ConfigError> {
    let cli = Cli::try_parse_from(std::iter::once("ringmq").chain(args.iter().copied()))?;
    let file = FileConfig::parse(toml, Path::new("ringmq.toml"))?;
    Config::merge(cli, file, None)
}

/// A file under the system temp directory, removed when dropped; also
/// the cluster settings' tests' (`name`s differ between tests, which run
/// in parallel in one process).
pub(super) struct TempFile(PathBuf);

impl TempFile {
    pub(super) fn new(name: &str, contents: impl AsRef<[u8]>) -> TempFile {
        let path = std::env::temp_dir().join(format!("ringmq-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("temp dir is writable");
        TempFile(path)
    }

    pub(super) fn arg(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn defaults() {
    let config = parse(&[]).expect("no flags is valid");
    assert_eq!(config.listeners, [tcp("0.0.0.0:1883", false)]);
    assert!(config.cores >= 1);
    assert_eq!(config.io_driver, IoDriver::Auto);
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.log_level.level_filter(), LevelFilter::INFO);
    let session = config.session_config();
    assert_eq!(session.max_inflight, 100);
    assert_eq!(session.max_queued_messages, 1000);
    assert_eq!(session.queue_full, QueueFullPolicy::Drop);
    assert_eq!(session.max_keepalive, 65535);
    assert_eq!(session.max_packet_size, 1_048_576);
    assert_eq!(session.topic_alias_maximum, 10);
    assert!(session.server_topic_aliases);
    assert_eq!(config.shared_subscription_strategy, Strategy::RoundRobin);
    assert_eq!(
        session.topics,
        TopicLimits {
            max_length: 65535,
            max_levels: 128
        }
    );
    assert_eq!(session.max_subscriptions, 1000);
    assert_eq!(config.max_connections, 100_000);
    assert_eq!(config.connect_timeout(), Duration::from_secs(10));
    assert_eq!(config.park_after(), None);
    assert_eq!(config.max_client_id_length, 256);
}

#[test]
fn zero_means_no_limit_where_documented() {
    let config = parse(&[
        "--max-connections",
        "0",
        "--max-subscriptions-per-client",
        "0",
    ])
    .expect("valid");
    assert_eq!(config.max_connections, 0);
    assert_eq!(config.session_config().max_subscriptions, usize::MAX);
}

#[test]
fn file_only() {
    let file = TempFile::new(
        "file-only.toml",
        r#"
        listen = ["127.0.0.1:0", "[::1]:8883"]
        ws_listen = ["127.0.0.1:8083"]
        proxy_protocol = true
        cores = 3
        io_driver = "epoll"
        log_level = "debug"
        log_format = "json"
        max_inflight = 10
        max_queued_messages = 5
        queue_full_policy = "disconnect"
        max_keepalive = 60
        max_packet_size = 4096
        topic_alias_maximum = 0
        server_topic_aliases = false
        shared_subscription_strategy = "sticky"
        max_connections = 7
        connect_timeout = 3
        park_after_ms = 200
        max_topic_length = 100
        max_topic_levels = 8
        max_subscriptions_per_client = 20
        max_client_id_length = 64
        metrics_listen = "127.0.0.1:9090"
        sys_interval = 0
        data_dir = "/var/lib/ringmq"
        durability = "always"
        durability_interval_ms = 250
        repair = true
        "#,
    );
    let config = parse(&["--config", file.arg()]).expect("valid file");
    assert_eq!(
        config,
        Config {
            listeners: vec![
                tcp("127.0.0.1:0", true),
                tcp("[::1]:8883", true),
                websocket("127.0.0.1:8083", false),
            ],
            cores: 3,
            io_driver: IoDriver::Epoll,
            log_level: LogLevel::Debug,
            log_format: LogFormat::Json,
            max_inflight: 10,
            max_queued_messages: 5,
            queue_full_policy: QueueFullPolicy::Disconnect,
            max_keepalive: 60,
            max_packet_size: 4096,
            topic_alias_maximum: 0,
            server_topic_aliases: false,
            shared_subscription_strategy: Strategy::Sticky,
            max_connections: 7,
            connect_timeout: 3,
            park_after_ms: 200,
            max_topic_length: 100,
            max_topic_levels: 8,
            max_subscriptions_per_client: 20,
            max_client_id_length: 64,
            metrics_listen: Some("127.0.0.1:9090".parse().expect("literal")),
            sys_interval: 0,
            cluster: None,
            store: Some(StoreSettings {
                dir: "/var/lib/ringmq".into(),
                durability: Durability::Always,
                interval: Duration::from_millis(250),
                repair: true,
            }),
            auth: crate::auth::AuthSettings {
                password_file: None,
                allow_anonymous: true,
                threads: 2,
                queue: 256,
                acl_file: None,
            },
            abuse: crate::abuse::AbuseSettings::default(),
        }
    );
}

#[test]
fn cli_overrides_file() {
    let toml = r#"
        listen = ["127.0.0.1:1"]
        cores = 3
        io_driver = "epoll"
        max_inflight = 10
        queue_full_policy = "disconnect"
        shared_subscription_strategy = "random"
    "#;
    let config = merge(
        &[
            "--listen",
            "127.0.0.1:2",
            "--io-driver",
            "uring",
            "--max-inflight",
            "20",
            "--queue-full-policy",
            "drop",
            "--log-level",
            "warn",
            "--shared-subscription-strategy",
            "round_robin",
        ],
        toml,
    )
    .expect("valid");
    assert_eq!(config.listeners, [tcp("127.0.0.1:2", false)]);
    assert_eq!(config.cores, 3, "not given on the command line");
    assert_eq!(config.io_driver, IoDriver::Uring);
    assert_eq!(config.max_inflight, 20);
    assert_eq!(config.queue_full_policy, QueueFullPolicy::Drop);
    assert_eq!(config.log_level, LogLevel::Warn);
    let config = merge(
        &[
            "--topic-alias-maximum",
            "3",
            "--server-topic-aliases",
            "false",
        ],
        "topic_alias_maximum = 100\nserver_topic_aliases = true",
    )
    .expect("valid");
    assert_eq!(config.topic_alias_maximum, 3);
    assert!(!config.server_topic_aliases);
    assert_eq!(config.shared_subscription_strategy, Strategy::RoundRobin);
    let config = merge(&[], toml).expect("valid");
    assert_eq!(config.shared_subscription_strategy, Strategy::Random);
}

#[test]
fn unknown_key_is_named() {
    let error = merge(&[], "max_inflight = 5\nmax_infligth = 5\n").expect_err("typo");
    let message = error.to_string();
    assert!(matches!(error, ConfigError::ParseFile { .. }));
    assert!(message.contains("ringmq.toml"), "{message}");
    assert!(message.contains("max_infligth"), "{message}");
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn config_is_not_a_file_key() {
    let error = merge(&[], "config = \"other.toml\"").expect_err("cli only");
    assert!(error.to_string().contains("config"), "{error}");
}

#[test]
fn bad_values_are_named() {
    let cases = [
        (
            merge(&["--max-inflight", "0"], ""),
            "invalid value for `max_inflight` (--max-inflight): must be between 1 and 65535",
        ),
        (
            merge(&[], "max_queued_messages = 0"),
            "invalid value for `max_queued_messages` (--max-queued-messages): must be at least 1",
        ),
        (
            merge(&["--max-packet-size", "15"], ""),
            "invalid value for `max_packet_size` (--max-packet-size): must be between 16 and 268435455",
        ),
        (
            merge(&[], "max_packet_size = 268435456"),
            "invalid value for `max_packet_size` (--max-packet-size): must be between 16 and 268435455",
        ),
        (
            merge(&[], "listen = []"),
            "invalid value for `listen` (--listen): must name at least one address",
        ),
        (
            merge(&["--connect-timeout", "0"], ""),
            "invalid value for `connect_timeout` (--connect-timeout): must be at least 1",
        ),
        (
            merge(&[], "max_topic_length = 0"),
            "invalid value for `max_topic_length` (--max-topic-length): must be between 1 and 65535",
        ),
        (
            merge(&["--max-topic-levels", "1025"], ""),
            "invalid value for `max_topic_levels` (--max-topic-levels): must be between 1 and 1024",
        ),
        (
            merge(&[], "max_topic_levels = 0"),
            "invalid value for `max_topic_levels` (--max-topic-levels): must be between 1 and 1024",
        ),
        (
            merge(&["--max-client-id-length", "22"], ""),
            "invalid value for `max_client_id_length` (--max-client-id-length): must be between 23 and 65535",
        ),
    ];
    for (result, expected) in cases {
        assert_eq!(result.expect_err(expected).to_string(), expected);
    }
}

#[test]
fn values_of_the_wrong_type_are_named() {
    let message = merge(&[], "io_driver = \"kqueue\"")
        .expect_err("bad")
        .to_string();
    assert!(message.contains("io_driver"), "{message}");
    let message = merge(&[], "max_inflight = 70000")
        .expect_err("bad")
        .to_string();
    assert!(message.contains("max_inflight"), "{message}");

    let error = parse(&["--listen", "localhost"]).expect_err("not an address");
    assert!(error.to_string().contains("--listen"), "{error}");
    let error = parse(&["--queue-full-policy", "block"]).expect_err("bad");
    assert!(error.to_string().contains("--queue-full-policy"), "{error}");
    let error = parse(&["--topic-alias-maximum", "65536"]).expect_err("bad");
    assert!(
        error.to_string().contains("--topic-alias-maximum"),
        "{error}"
    );
    let error = parse(&["--server-topic-aliases", "yes"]).expect_err("bad");
    assert!(
        error.to_string().contains("--server-topic-aliases"),
        "{error}"
    );
    let message = merge(&[], "server_topic_aliases = 1")
        .expect_err("bad")
        .to_string();
    assert!(message.contains("server_topic_aliases"), "{message}");
    let error = parse(&["--shared-subscription-strategy", "round-robin"]).expect_err("bad");
    assert!(
        error.to_string().contains("--shared-subscription-strategy"),
        "{error}"
    );
    let message = merge(&[], "shared_subscription_strategy = \"fair\"")
        .expect_err("bad")
        .to_string();
    assert!(
        message.contains("shared_subscription_strategy"),
        "{message}"
    );
}

#[test]
fn cores_zero_is_rejected() {
    let error = parse(&["--cores", "0"]).expect_err("zero");
    assert_eq!(
        error.to_string(),
        "invalid value for `cores` (--cores): must be at least 1"
    );
    assert!(merge(&[], "cores = 0").is_err());
    assert_eq!(
        parse(&["--cores", "1024"])
            .expect("above the CPU count")
            .cores,
        1024
    );
}

#[test]
fn unknown_flag_is_named() {
    let error = parse(&["--max-infligt", "5"]).expect_err("typo");
    let ConfigError::Cli(clap_error) = &error else {
        panic!("expected a clap error, got {error}");
    };
    assert_eq!(clap_error.kind(), ErrorKind::UnknownArgument);
    assert!(error.to_string().contains("--max-infligt"), "{error}");
}

#[test]
fn help_and_version_are_clap_errors_to_exit_with() {
    let kind = |args: &[&str]| match parse(args) {
        Err(ConfigError::Cli(error)) => Some(error.kind()),
        _ => None,
    };
    assert_eq!(kind(&["--help"]), Some(ErrorKind::DisplayHelp));
    assert_eq!(kind(&["--version"]), Some(ErrorKind::DisplayVersion));
}

#[test]
fn unreadable_file_is_named() {
    let error = parse(&["--config", "/nonexistent/ringmq.toml"]).expect_err("missing");
    assert!(
        error
            .to_string()
            .starts_with("cannot read config file /nonexistent/ringmq.toml: "),
        "{error}"
    );
}

#[test]
fn deploy_example_parses_and_sets_every_key() {
    let file = FileConfig::parse(
        include_str!("../../deploy/ringmq.toml"),
        Path::new("deploy/ringmq.toml"),
    )
    .expect("example config parses");
    // Destructured without `..` so a new key fails to compile here until
    // the example documents it.
    let FileConfig {
        listen,
        ws_listen,
        proxy_protocol,
        listener,
        tls_listen,
        tls_cert,
        tls_key,
        tls_client_ca,
        tls_require_client_cert,
        tls_use_identity_as_username,
        cores,
        io_driver,
        log_level,
        log_format,
        max_inflight,
        max_queued_messages,
        queue_full_policy,
        max_keepalive,
        max_packet_size,
        topic_alias_maximum,
        server_topic_aliases,
        shared_subscription_strategy,
        max_connections,
        connect_timeout,
        park_after_ms,
        max_topic_length,
        max_topic_levels,
        max_subscriptions_per_client,
        max_client_id_length,
        metrics_listen,
        sys_interval,
        data_dir,
        durability,
        durability_interval_ms,
        repair,
        password_file,
        allow_anonymous,
        auth_threads,
        auth_queue,
        acl_file,
        max_publish_rate,
        max_publish_byte_rate,
        max_connections_per_address,
        max_connection_rate_per_address,
        flapping_threshold,
        flapping_window,
        flapping_ban,
        cluster,
    } = &file;
    assert!(listen.is_some());
    assert!(ws_listen.is_some());
    assert!(proxy_protocol.is_some());
    assert!(listener.as_ref().is_some_and(|tables| !tables.is_empty()));
    // Commented out like `password_file`: the certificates do not exist
    // where this test runs.
    for (key, given) in [
        ("tls_listen", tls_listen.is_some()),
        ("tls_cert", tls_cert.is_some()),
        ("tls_key", tls_key.is_some()),
        ("tls_client_ca", tls_client_ca.is_some()),
        ("tls_require_client_cert", tls_require_client_cert.is_some()),
        (
            "tls_use_identity_as_username",
            tls_use_identity_as_username.is_some(),
        ),
    ] {
        assert!(!given && example_documents(key), "{key}");
    }
    assert!(cores.is_some());
    assert!(io_driver.is_some());
    assert!(log_level.is_some());
    assert!(log_format.is_some());
    assert!(max_inflight.is_some());
    assert!(max_queued_messages.is_some());
    assert!(queue_full_policy.is_some());
    assert!(max_keepalive.is_some());
    assert!(max_packet_size.is_some());
    assert!(topic_alias_maximum.is_some());
    assert!(server_topic_aliases.is_some());
    assert!(shared_subscription_strategy.is_some());
    assert!(max_connections.is_some());
    assert!(connect_timeout.is_some());
    assert!(park_after_ms.is_some());
    assert!(max_topic_length.is_some());
    assert!(max_topic_levels.is_some());
    assert!(max_subscriptions_per_client.is_some());
    assert!(max_client_id_length.is_some());
    assert!(metrics_listen.is_some());
    assert!(sys_interval.is_some());
    assert!(data_dir.is_some());
    assert!(durability.is_some());
    assert!(durability_interval_ms.is_some());
    assert!(repair.is_some());
    // Commented out, as `# password_file = ...`: the file it names does
    // not exist where this test runs.
    assert!(password_file.is_none());
    assert!(example_documents("password_file"));
    assert!(allow_anonymous.is_some());
    assert!(auth_threads.is_some());
    assert!(auth_queue.is_some());
    // Commented out like `password_file`.
    assert!(acl_file.is_none());
    assert!(example_documents("acl_file"));
    for limit in [
        max_publish_rate,
        max_publish_byte_rate,
        max_connection_rate_per_address,
    ] {
        assert_eq!(*limit, Some(0), "off by default");
    }
    assert_eq!(*max_connections_per_address, Some(0));
    assert_eq!(*flapping_threshold, Some(0));
    assert!(flapping_window.is_some());
    assert!(flapping_ban.is_some());
    assert!(cluster.is_none(), "the example is a single node");
    Config::merge(Cli::default(), file, None).expect("example config is valid");
}

/// Whether deploy/ringmq.toml has `key` commented out, as `# key = value`.
fn example_documents(key: &str) -> bool {
    include_str!("../../deploy/ringmq.toml")
        .lines()
        .any(|line| line.starts_with(&format!("# {key} = ")))
}

/// The `[cluster]` table is commented out in the example (a single
/// node needs none): every key must still be there, as `# key = value`.
#[test]
fn deploy_example_documents_every_cluster_key() {
    let example = include_str!("../../deploy/ringmq.toml");
    let (_, section) = example
        .split_once("\n# [cluster]\n")
        .expect("a commented [cluster] table");
    let uncommented: String = section
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| {
            line.split_once(" = ")
                .is_some_and(|(key, _)| key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let file = FileConfig::parse(
        &format!("[cluster]\n{uncommented}"),
        Path::new("deploy/ringmq.toml"),
    )
    .expect("the cluster keys parse");
    let table = file.cluster.expect("a [cluster] table");
    // Destructured without `..` so a new key fails to compile here until
    // the example documents it.
    let cluster::ClusterTable {
        node_id,
        listen,
        advertise,
        seeds,
        ca_file,
        cert_file,
        key_file,
        secret_file,
        ack,
        probe_interval_ms,
        suspect_timeout_ms,
        route_ack_timeout_ms,
        peer_buffer_bytes,
        peer_hold_secs,
        bootstrap_expect,
        replication_factor,
    } = &table;
    assert!(node_id.is_some());
    assert!(listen.is_some());
    assert!(advertise.is_some());
    assert!(seeds.as_ref().is_some_and(|seeds| !seeds.is_empty()));
    assert!(ca_file.is_some());
    assert!(cert_file.is_some());
    assert!(key_file.is_some());
    assert!(secret_file.is_some());
    assert!(ack.is_some());
    assert!(probe_interval_ms.is_some());
    assert!(suspect_timeout_ms.is_some());
    assert!(route_ack_timeout_ms.is_some());
    assert!(peer_buffer_bytes.is_some());
    assert!(peer_hold_secs.is_some());
    assert!(bootstrap_expect.is_some());
    assert!(replication_factor.is_some());
    // Valid once one of the two kinds of trust is chosen.
    let files_only = cluster::ClusterTable {
        secret_file: None,
        ..table
    };
    let settings = cluster::merge(&cluster::ClusterArgs::default(), Some(&files_only), None)
        .expect("example cluster table is valid")
        .expect("cluster mode");
    assert_eq!(settings.node_id, "node-1");
}
