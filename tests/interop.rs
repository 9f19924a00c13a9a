//! Interoperability with third-party clients: paho-mqtt (Python) and the
//! Mosquitto command-line clients, run as subprocesses against the real
//! broker. Missing tools FAIL the test (they do not skip it): .ci/run
//! installs them, so a missing tool means the environment is broken.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Broker;

/// Long enough for every check in a script, short enough to catch a hang.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

/// Runs `cmd` to completion (killing it after SCRIPT_TIMEOUT) and panics
/// with its output unless it exits 0.
fn run_script(mut cmd: Command, what: &str) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

fn require(cmd: &mut Command, install_hint: &str) {
    let ok = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "required tool missing: {install_hint}");
}

#[test]
fn paho_python_client() {
    require(
        Command::new("python3").args(["-c", "import paho.mqtt.client"]),
        "python3 with paho-mqtt 2.x (`pip install paho-mqtt`)",
    );
    require(
        Command::new("python3").args([
            "-c",
            "import paho.mqtt.client as m, sys; sys.exit(0 if hasattr(m, 'CallbackAPIVersion') else 1)",
        ]),
        "paho-mqtt 2.x (the script uses the VERSION2 callback API; `pip install -U paho-mqtt`)",
    );
    let broker = Broker::start(&["--cores", "2"]);
    let mut cmd = Command::new("python3");
    cmd.arg(script("paho_check.py"))
        .arg(broker.addr.ip().to_string())
        .arg(broker.addr.port().to_string());
    run_script(cmd, "paho_check.py");
}

#[test]
fn paho_python_client_over_websocket() {
    require(
        Command::new("python3").args([
            "-c",
            "import paho.mqtt.client as m, sys; sys.exit(0 if hasattr(m, 'CallbackAPIVersion') else 1)",
        ]),
        "python3 with paho-mqtt 2.x (`pip install 'paho-mqtt>=2,<3'`)",
    );
    let broker = Broker::start(&["--ws-listen", "127.0.0.1:0", "--cores", "2"]);
    let mut cmd = Command::new("python3");
    cmd.arg(script("paho_websocket.py"))
        .arg(broker.addr.ip().to_string())
        .arg(broker.addr.port().to_string())
        .arg(broker.ws_addr().port().to_string());
    run_script(cmd, "paho_websocket.py");
}

#[test]
fn mosquitto_command_line_clients() {
    for tool in ["mosquitto_pub", "mosquitto_sub"] {
        // `--help` exits 1, so ask the shell whether the tool exists.
        require(
            Command::new("sh").args(["-c", &format!("command -v {tool}")]),
            "mosquitto_pub / mosquitto_sub (`apt-get install -y mosquitto-clients`)",
        );
    }
    let broker = Broker::start(&["--cores", "2"]);
    let mut cmd = Command::new("bash");
    cmd.arg(script("mosquitto_clients.sh"))
        .arg(broker.addr.ip().to_string())
        .arg(broker.addr.port().to_string());
    run_script(cmd, "mosquitto_clients.sh");
}
