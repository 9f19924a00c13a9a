//! The files under deploy/ that an operator copies onto a machine are
//! checked by the tools that will read them: HAProxy's own config check,
//! and systemd's unit verifier. tests/proxy.rs also runs HAProxy with
//! deploy/haproxy.cfg for real.
//!
//! Both tools come from Debian packages (`haproxy`, `systemd`) that
//! .ci/run installs; a machine without them fails here with that advice
//! rather than skipping, so a green run always means the files were
//! checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn run(command: &mut Command, package: &str) -> Output {
    command.output().unwrap_or_else(|error| {
        panic!("cannot run {command:?} ({error}); apt-get install {package}")
    })
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn haproxy_accepts_the_config() {
    let output = run(
        Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(deploy("haproxy.cfg"))
            .env("RINGMQ1_ADDR", "192.0.2.1:1883")
            .env("RINGMQ2_ADDR", "192.0.2.2:1883"),
        "haproxy",
    );
    assert!(output.status.success(), "haproxy -c:\n{}", text(&output));
    assert!(
        !text(&output).contains("[WARNING]"),
        "haproxy -c warns:\n{}",
        text(&output)
    );
}

#[test]
fn haproxy_refuses_the_config_without_broker_addresses() {
    // The brokers' addresses have no default: a forgotten variable must
    // stop HAProxy from starting, not send clients to a guessed address.
    let output = run(
        Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(deploy("haproxy.cfg"))
            .env_remove("RINGMQ1_ADDR")
            .env_remove("RINGMQ2_ADDR"),
        "haproxy",
    );
    assert!(!output.status.success(), "haproxy -c:\n{}", text(&output));
}

/// `systemd-analyze verify` checks every key and value of the unit, and
/// that `ExecStart`'s program exists and is executable. The unit names
/// /usr/local/bin/ringmq, where an operator installs it; the copy verified
/// here names the binary this test run built instead, so the check is the
/// real one and not a complaint about a missing file. It exits 0 even when
/// it reports unknown keys, so any output at all fails the test.
#[test]
fn systemd_verifies_the_unit() {
    let unit = std::fs::read_to_string(deploy("ringmq.service")).expect("deploy/ringmq.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/ringmq --config /etc/ringmq/ringmq.toml\n"),
        "the unit starts the installed binary with the installed config"
    );
    let unit = unit.replace("/usr/local/bin/ringmq", env!("CARGO_BIN_EXE_ringmq"));
    let dir = std::env::temp_dir().join(format!("ringmq-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    let path = dir.join("ringmq.service");
    std::fs::write(&path, unit).expect("temp dir is writable");
    let output = run(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        "systemd",
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success() && text(&output).trim().is_empty(),
        "systemd-analyze verify ({}):\n{}",
        output.status,
        text(&output)
    );
}
