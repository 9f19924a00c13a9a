//! The metrics endpoint: `GET /metrics`, `/health` and `/ready` over plain
//! HTTP/1.1, one request per connection.
//!
//! It runs on a thread of its own with blocking std sockets, not on a
//! shard: a scrape waits for every shard's answer, and waiting is what a
//! shard must never do. One request at a time is enough for a Prometheus
//! server or two and a load balancer's probes; each connection gets a
//! short timeout so a stalled client cannot hold the endpoint.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use tracing::{debug, info};

use super::render::{self, CONTENT_TYPE};
use super::{Readiness, gather};
use crate::cluster::ClusterStatus;
use crate::shard::mesh::MeshHandle;

/// How long a scrape waits for the shards; also the health check's
/// deadline, past which a shard is reported stuck.
const SHARD_DEADLINE: Duration = Duration::from_secs(1);

/// Per-connection read and write timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` now (so that a busy port fails the start) and serves it on
/// a new thread for the life of the process.
pub fn start(
    addr: SocketAddr,
    mesh: MeshHandle,
    readiness: Readiness,
    cluster: Option<ClusterStatus>,
) -> io::Result<()> {
    let listener = TcpListener::bind(addr).map_err(|error| {
        io::Error::new(error.kind(), format!("cannot listen on {addr}: {error}"))
    })?;
    let addr = listener.local_addr()?;
    info!(%addr, transport = %"metrics", "listening");
    thread::Builder::new()
        .name("ringmq-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Err(error) = serve(stream, &mesh, &readiness, cluster.as_ref()) {
                    debug!(%error, "metrics request failed");
                }
            }
        })?;
    Ok(())
}

fn serve(
    stream: TcpStream,
    mesh: &MeshHandle,
    readiness: &Readiness,
    cluster: Option<&ClusterStatus>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The headers are read and ignored: nothing in them changes the answer.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let response = respond(&request_line, mesh, readiness, cluster);
    let mut stream = &stream;
    write!(
        stream,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    )?;
    stream.write_all(response.body.as_bytes())?;
    stream.flush()
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn respond(
    request_line: &str,
    mesh: &MeshHandle,
    readiness: &Readiness,
    cluster: Option<&ClusterStatus>,
) -> Response {
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return Response::text("405 Method Not Allowed", "only GET\n");
    }
    // A query string changes nothing here.
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let (snapshots, silent) = gather(mesh, SHARD_DEADLINE);
            if !silent.is_empty() {
                // A partial sum would look like counters going down.
                return Response::text(
                    "503 Service Unavailable",
                    format!("shards not answering: {silent:?}\n"),
                );
            }
            Response {
                status: "200 OK",
                content_type: CONTENT_TYPE,
                body: render::render(&snapshots, cluster.map(ClusterStatus::snapshot).as_ref()),
            }
        }
        "/health" => {
            let (_, silent) = gather(mesh, SHARD_DEADLINE);
            match silent.as_slice() {
                [] => Response::text("200 OK", "OK\n"),
                stuck => Response::text(
                    "503 Service Unavailable",
                    format!("shards not answering within {SHARD_DEADLINE:?}: {stuck:?}\n"),
                ),
            }
        }
        "/ready" => match readiness.not_ready() {
            None => Response::text("200 OK", "OK\n"),
            Some(why) => Response::text("503 Service Unavailable", format!("{why}\n")),
        },
        _ => Response::text("404 Not Found", "try /metrics, /health or /ready\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_follows_the_readiness_and_unknown_paths_are_404() {
        let (mesh, _inboxes) = MeshHandle::build(1, false);
        let readiness = Readiness::default();
        let ready =
            |readiness: &Readiness| respond("GET /ready HTTP/1.1\r\n", &mesh, readiness, None);
        assert_eq!(ready(&readiness).status, "503 Service Unavailable");
        readiness.set_ready();
        assert_eq!(ready(&readiness).status, "200 OK");
        let other = respond("GET /other HTTP/1.1\r\n", &mesh, &readiness, None);
        assert_eq!(other.status, "404 Not Found");
        let post = respond("POST /metrics HTTP/1.1\r\n", &mesh, &readiness, None);
        assert_eq!(post.status, "405 Method Not Allowed");
    }
}
