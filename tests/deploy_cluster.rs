//! The files under deploy/cluster/ are checked by tools that read them as
//! Docker, Kubernetes and HAProxy will:
//!
//! - `haproxy -c` (Debian's `haproxy`) on haproxy.cfg;
//! - `kubernetes-validate --strict` (PyPI) on k8s/*.yaml, against the
//!   Kubernetes OpenAPI schemas it bundles, so no API server is needed;
//! - `check-jsonschema --builtin-schema vendor.compose-spec` (PyPI) on
//!   compose.yaml, against the Compose Specification's JSON schema it
//!   bundles (no `docker compose` here: the project's machines have no
//!   Docker engine or compose plugin);
//! - the `toml` crate on ringmq.toml, whose keys are also checked against
//!   the documented single-node file and the cluster's own key names.
//!
//! Then the files are checked against each other: the ports and names
//! one of them uses are the ones another defines.
//!
//! .ci/run installs the three tools. Elsewhere a missing tool is reported
//! and its test passes, unless `CI` is set, where it is a failure.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `[cluster]` keys the cluster's configuration accepts.
const CLUSTER_KEYS: &[&str] = &[
    "node_id",
    "listen",
    "advertise",
    "seeds",
    "secret_file",
    "ca_file",
    "cert_file",
    "key_file",
    "ack",
    "probe_interval_ms",
    "suspect_timeout_ms",
    "route_ack_timeout_ms",
    "peer_buffer_bytes",
    "peer_hold_secs",
];

const NODES: &[&str] = &["ringmq1", "ringmq2", "ringmq3"];

fn cluster(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/cluster")
        .join(file)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Runs a validator. `None`, after saying so, when it is not installed
/// and this is not CI.
fn run(command: &mut Command, install: &str) -> Option<Output> {
    match command.output() {
        Ok(output) => Some(output),
        Err(error) if error.kind() == ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            eprintln!(
                "skipped: {} is not installed ({install})",
                command.get_program().to_string_lossy()
            );
            None
        }
        Err(error) => panic!("cannot run {command:?} ({error}); {install}; .ci/run installs it"),
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The node configuration, parsed.
fn node_config() -> toml::Table {
    let path = cluster("ringmq.toml");
    toml::from_str(&read(&path)).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The keys set at the top level of a TOML file, by parsing it.
fn top_level_keys(path: &Path) -> BTreeSet<String> {
    let table: toml::Table = toml::from_str(&read(path)).expect("valid TOML");
    table.keys().cloned().collect()
}

#[test]
fn haproxy_accepts_the_config() {
    let Some(output) = run(
        Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(cluster("haproxy.cfg")),
        "apt-get install haproxy",
    ) else {
        return;
    };
    assert!(output.status.success(), "haproxy -c:\n{}", text(&output));
    // The brokers' names resolve only on the compose network; HAProxy says
    // so (`init-addr ... none` lets it start regardless). Any other
    // warning is a fault in the file.
    let output = text(&output);
    for line in output.lines().filter(|line| line.contains("[WARNING]")) {
        assert!(
            NODES
                .iter()
                .any(|node| line.contains(&format!("could not resolve address '{node}'"))),
            "haproxy -c warns:\n{output}"
        );
    }
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(cluster("k8s"))
        .expect("deploy/cluster/k8s")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    manifests.sort();
    // --strict: an unknown field (a misspelt key) is an error, not ignored
    // as the API server would silently do.
    let Some(output) = run(
        Command::new("kubernetes-validate")
            .arg("--strict")
            .args(&manifests),
        "pip install kubernetes-validate",
    ) else {
        return;
    };
    let output_text = text(&output);
    assert!(
        output.status.success(),
        "kubernetes-validate:\n{output_text}"
    );
    // Every resource was found and checked, none passed over for want of a
    // schema.
    for resource in [
        "statefulset/ringmq",
        "service/ringmq-headless",
        "service/ringmq",
        "poddisruptionbudget/ringmq",
        "secret/ringmq-cluster",
        "configmap/ringmq-config",
    ] {
        assert!(
            output_text.contains(&format!("passed for resource {resource} ")),
            "kubernetes-validate did not check {resource}:\n{output_text}"
        );
    }
    assert!(
        !output_text.contains("WARN"),
        "kubernetes-validate warns:\n{output_text}"
    );
}

#[test]
fn compose_file_matches_the_compose_spec() {
    let Some(output) = run(
        Command::new("check-jsonschema")
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(cluster("compose.yaml")),
        "pip install check-jsonschema",
    ) else {
        return;
    };
    assert!(
        output.status.success(),
        "check-jsonschema (compose-spec):\n{}",
        text(&output)
    );
}

#[test]
fn node_config_uses_only_known_keys() {
    let config = node_config();

    // Outside [cluster], only keys that the single-node example documents.
    let documented =
        top_level_keys(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ringmq.toml"));
    for key in config.keys().filter(|key| *key != "cluster") {
        assert!(
            documented.contains(key),
            "`{key}` is not a key of deploy/ringmq.toml"
        );
    }
    let listeners = config["listener"].as_array().expect("[[listener]] tables");
    for listener in listeners {
        for key in listener.as_table().expect("a table").keys() {
            assert!(
                [
                    "address",
                    "transport",
                    "proxy_protocol",
                    "cert_file",
                    "key_file",
                    "client_ca_file",
                    "require_client_cert",
                    "use_identity_as_username",
                ]
                .contains(&key.as_str()),
                "unknown [[listener]] key `{key}`"
            );
        }
    }

    // In [cluster], the keys set and those shown commented out alike.
    let set = config["cluster"].as_table().expect("a [cluster] table");
    for key in set.keys() {
        assert!(
            CLUSTER_KEYS.contains(&key.as_str()),
            "unknown [cluster] key `{key}`"
        );
    }
    let text = read(&cluster("ringmq.toml"));
    let section = &text[text.find("\n[cluster]\n").expect("[cluster] header")..];
    let mut commented = 0;
    for line in section.lines() {
        if let Some((key, _)) = line
            .strip_prefix("# ")
            .and_then(|rest| rest.split_once(" = "))
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            assert!(
                CLUSTER_KEYS.contains(&key),
                "commented-out [cluster] key `{key}` is unknown"
            );
            commented += 1;
        }
    }
    assert!(commented > 0, "the optional keys are shown commented out");
    assert!(
        ["remote", "local"].contains(&set["ack"].as_str().expect("ack is a string")),
        "ack is \"remote\" or \"local\""
    );
}

#[test]
fn kubernetes_config_map_is_the_node_config() {
    // configmap.yaml holds ringmq.toml as a literal block, indented 4.
    let manifest = read(&cluster("k8s/configmap.yaml"));
    let marker = "\n  ringmq.toml: |\n";
    let block = &manifest[manifest.find(marker).expect("data key ringmq.toml") + marker.len()..];
    let embedded: String = block
        .split_inclusive('\n')
        .map(|line| line.strip_prefix("    ").unwrap_or(line))
        .collect();
    assert!(
        embedded == read(&cluster("ringmq.toml")),
        "k8s/configmap.yaml differs from ringmq.toml; regenerate it as its comment says"
    );
}

#[test]
fn the_files_agree_on_ports_names_and_paths() {
    let config = node_config();
    let proxied: Vec<&str> = config["listener"]
        .as_array()
        .expect("[[listener]] tables")
        .iter()
        .filter(|listener| {
            listener
                .get("proxy_protocol")
                .and_then(toml::Value::as_bool)
                == Some(true)
        })
        .map(|listener| listener["address"].as_str().expect("address"))
        .collect();
    assert_eq!(
        proxied,
        ["0.0.0.0:1884", "0.0.0.0:8884"],
        "PROXY-protocol listeners on 1884, and 8884 for TLS"
    );
    // Every TLS listener reads its files from the one mounted secret.
    let tls: Vec<(&str, &str, &str)> = config["listener"]
        .as_array()
        .expect("[[listener]] tables")
        .iter()
        .filter(|listener| listener.get("transport").and_then(toml::Value::as_str) == Some("tls"))
        .map(|listener| {
            let field = |key: &str| listener[key].as_str().expect("a string");
            (field("address"), field("cert_file"), field("key_file"))
        })
        .collect();
    let (cert_file, key_file) = (
        "/run/secrets/ringmq-tls/tls.crt",
        "/run/secrets/ringmq-tls/tls.key",
    );
    assert_eq!(
        tls,
        [
            ("0.0.0.0:8883", cert_file, key_file),
            ("0.0.0.0:8884", cert_file, key_file)
        ]
    );
    assert_eq!(config["metrics_listen"].as_str(), Some("0.0.0.0:9090"));
    assert_eq!(config["cluster"]["listen"].as_str(), Some("0.0.0.0:7946"));
    let secret_file = config["cluster"]["secret_file"]
        .as_str()
        .expect("secret_file");

    // HAProxy sends to the proxied listener and checks /ready on the
    // metrics port.
    let haproxy = read(&cluster("haproxy.cfg"));
    for node in NODES {
        assert!(haproxy.contains(&format!("\n    server {node} {node}:1884\n")));
    }
    assert!(haproxy.contains("option httpchk GET /ready\n"));
    assert!(haproxy.contains(" check port 9090 "));
    assert!(haproxy.contains(" send-proxy-v2 "));
    for node in NODES {
        assert!(haproxy.contains(&format!("\n    server {node} {node}:8884\n")));
    }
    assert!(haproxy.contains("frontend mqtts\n    bind :8883\n"));

    // Compose: each node seeds the other two, advertises its own name, and
    // gets the secret where the config reads it.
    let compose = read(&cluster("compose.yaml"));
    for node in NODES {
        let seeds: Vec<String> = NODES
            .iter()
            .filter(|other| *other != node)
            .map(|other| format!("{other}:7946"))
            .collect();
        for flag in [
            format!("--node-id={node}"),
            format!("--cluster-advertise={node}:7946"),
            format!("--seeds={}", seeds.join(",")),
        ] {
            assert!(
                compose.contains(&format!("- {flag}\n")),
                "compose.yaml lacks {flag}"
            );
        }
    }
    assert!(compose.contains(&format!("target: {secret_file}\n")));
    for file in [cert_file, key_file] {
        assert!(compose.contains(&format!("target: {file}\n")), "{file}");
    }
    assert!(compose.contains("- \"8883:8883\"\n"));

    // Kubernetes: the same ports by name, the secret at the same path, and
    // the probes on the metrics port.
    let statefulset = read(&cluster("k8s/statefulset.yaml"));
    for port in [
        "name: mqtt\n              containerPort: 1883",
        "name: mqtt-proxy\n              containerPort: 1884",
        "name: mqtts\n              containerPort: 8883",
        "name: mqtts-proxy\n              containerPort: 8884",
        "name: metrics\n              containerPort: 9090",
        "name: cluster\n              containerPort: 7946\n              protocol: UDP",
    ] {
        assert!(
            statefulset.contains(port),
            "statefulset.yaml lacks {port:?}"
        );
    }
    let (secret_dir, secret_name) = secret_file.rsplit_once('/').expect("an absolute path");
    assert!(statefulset.contains(&format!("mountPath: {secret_dir}\n")));
    assert!(statefulset.contains(&format!("path: {secret_name}\n")));
    assert!(statefulset.contains("mountPath: /run/secrets/ringmq-tls\n"));
    assert!(statefulset.contains("secretName: ringmq-tls\n"));
    for key in ["tls.crt", "tls.key"] {
        assert!(statefulset.contains(&format!("- key: {key}\n                path: {key}\n")));
    }
    assert!(statefulset.contains("path: /ready\n              port: metrics\n"));
    assert!(statefulset.contains("path: /health\n              port: metrics\n"));
    assert!(statefulset.contains("- --node-id=$(POD_NAME)\n"));
    assert!(
        statefulset.contains("- --seeds=ringmq-headless.$(NAMESPACE).svc.cluster.local:7946\n")
    );
    let services = read(&cluster("k8s/services.yaml"));
    assert!(services.contains("publishNotReadyAddresses: true\n"));
    assert!(services.contains("port: 8883\n      targetPort: mqtts\n"));
}
