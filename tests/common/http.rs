//! A minimal blocking HTTP/1.1 GET for the broker's metrics endpoint (and
//! a Prometheus server's API), and finding the endpoint's address in the
//! broker's log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::Broker;

/// The answer to `GET /ready` once it is 200, or the last one after 5 s.
/// The broker marks itself ready just after its `listening` lines, which
/// is what [`Broker::start`] waits for, so the first answer may still be
/// 503 `starting`.
pub fn wait_ready(addr: SocketAddr) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get(addr, "/ready");
        if answer.0 == 200 || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status code and body of `GET path` on `addr`.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|error| panic!("cannot connect to {addr}: {error}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .unwrap_or_else(|error| panic!("reading the answer to GET {path}: {error}"));
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

impl Broker {
    /// The address announced with `listening addr=... transport=metrics`
    /// (given `--metrics-listen`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.announced_addr("transport=metrics")
    }
}

/// The value of the first sample line of `text` starting with `prefix`
/// (a metric name with its labels, exactly as exposed).
pub fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(prefix)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
        .parse()
        .unwrap_or_else(|error| panic!("sample {prefix} is not a number: {error}"))
}
