//! One connection's tasks: hellos, readers that turn streams into frames
//! for the main loop, and writers that drain a lane's output into its
//! stream. They own nothing of the node; they only report [`Event`]s.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::sync::mpsc;

use super::CLOSE_DUPLICATE_NODE_ID;
use super::CLOSE_PROTOCOL;
use crate::cluster::frame::{self, ArchivedClusterMsg, ClusterMsg, FrameReader, MAX_FRAME_LEN};

/// Something a connection's tasks report to the main loop.
pub(super) enum Event {
    /// Hellos exchanged: the link is ready to carry frames.
    Up {
        link: LinkId,
        hello: Hello,
        connection: quinn::Connection,
        control: quinn::SendStream,
    },
    Frame {
        link: LinkId,
        frame: frame::Frame,
    },
    Datagram {
        link: LinkId,
        data: Bytes,
    },
    /// The connection ended or could not be made. `duplicate_id`: the peer
    /// closed it because a live node already uses this node's id.
    Closed {
        link: LinkId,
        reason: String,
        duplicate_id: bool,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Hello {
    pub(super) node_id: ByteString,
    pub(super) incarnation: u64,
    pub(super) advertise: SocketAddr,
}

pub(super) type LinkId = u64;

/// A connection with its control stream, both halves.
pub(super) type Established = (quinn::Connection, quinn::SendStream, quinn::RecvStream);

/// Exchanges hellos, then reads the connection until it ends.
pub(super) async fn serve_connection(
    id: LinkId,
    connection: quinn::Connection,
    mut control: quinn::SendStream,
    mut control_rx: quinn::RecvStream,
    hello: ClusterMsg,
    events: mpsc::Sender<Event>,
) {
    let result = async {
        let mut out = BytesMut::new();
        frame::encode(&hello, &mut out).map_err(|e| e.to_string())?;
        control.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut reader = FrameReader::new(MAX_FRAME_LEN);
        let first = read_frame(&mut control_rx, &mut reader).await?;
        let hello = parse_hello(&first)?;
        Ok::<_, String>((hello, reader))
    }
    .await;
    let (hello, reader) = match result {
        Ok(ok) => ok,
        Err(reason) => {
            connection.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
            let _ = events
                .send(Event::Closed {
                    link: id,
                    reason,
                    duplicate_id: false,
                })
                .await;
            return;
        }
    };
    let _ = events
        .send(Event::Up {
            link: id,
            hello,
            connection: connection.clone(),
            control,
        })
        .await;
    tokio::spawn(read_datagrams(id, connection.clone(), events.clone()));
    tokio::spawn(read_uni_streams(id, connection.clone(), events.clone()));
    let reason = match read_lane(id, control_rx, reader, &events).await {
        Ok(()) => "control stream finished".to_string(),
        Err(reason) => reason,
    };
    let why = connection.close_reason();
    connection.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
    let duplicate_id = matches!(
        &why,
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == CLOSE_DUPLICATE_NODE_ID.into()
    );
    let reason = why.map_or(reason, |why| why.to_string());
    let _ = events
        .send(Event::Closed {
            link: id,
            reason,
            duplicate_id,
        })
        .await;
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    reader: &mut FrameReader,
) -> Result<frame::Frame, String> {
    loop {
        if let Some(frame) = reader.next_frame().map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => reader.push(&chunk.bytes),
            Ok(None) => return Err("stream ended before a frame".into()),
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// Reads frames off one stream and hands them to the main loop in order.
async fn read_lane(
    id: LinkId,
    mut recv: quinn::RecvStream,
    mut reader: FrameReader,
    events: &mpsc::Sender<Event>,
) -> Result<(), String> {
    loop {
        while let Some(frame) = reader.next_frame().map_err(|e| e.to_string())? {
            if events.send(Event::Frame { link: id, frame }).await.is_err() {
                return Ok(());
            }
        }
        match recv.read_chunk(256 * 1024, true).await {
            Ok(Some(chunk)) => reader.push(&chunk.bytes),
            Ok(None) => return Ok(()),
            Err(error) => return Err(error.to_string()),
        }
    }
}

async fn read_uni_streams(id: LinkId, connection: quinn::Connection, events: mpsc::Sender<Event>) {
    while let Ok(recv) = connection.accept_uni().await {
        let events = events.clone();
        let connection = connection.clone();
        tokio::spawn(async move {
            let reader = FrameReader::new(MAX_FRAME_LEN);
            if let Err(reason) = read_lane(id, recv, reader, &events).await {
                // A malformed frame on any stream ends the whole link: the
                // outbox on the other side resends what was lost.
                connection.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
            }
        });
    }
}

async fn read_datagrams(id: LinkId, connection: quinn::Connection, events: mpsc::Sender<Event>) {
    while let Ok(data) = connection.read_datagram().await {
        if events
            .send(Event::Datagram { link: id, data })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Drains a lane's output into its stream. The buffers go to quinn as
/// they are (`write_all_chunks`), which keeps them until the peer
/// acknowledges them: `write_all(&[u8])` copied every byte into a buffer of
/// quinn's own first (1.2% of a node's CPU in cross-node pairs at QoS 0,
/// `memmove` under `Send::write`). Whatever queued up while the stream was
/// busy goes in the same call.
pub(super) async fn write_lane(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut chunks = Vec::new();
    while rx.recv_many(&mut chunks, LANE_CHUNKS).await > 0 {
        if send.write_all_chunks(&mut chunks).await.is_err() {
            return;
        }
        chunks.clear();
    }
    let _ = send.finish();
}

/// At most this many of a lane's buffers are written in one call: enough
/// that a backlog goes in a few calls, bounded so one call stays short.
const LANE_CHUNKS: usize = 64;

pub(super) async fn write_uni_lane(
    connection: quinn::Connection,
    rx: mpsc::UnboundedReceiver<Bytes>,
) {
    if let Ok(send) = connection.open_uni().await {
        write_lane(send, rx).await;
    }
}

fn parse_hello(frame: &frame::Frame) -> Result<Hello, String> {
    let msg = frame.access().map_err(|e| e.to_string())?;
    let ArchivedClusterMsg::Hello {
        node_id,
        incarnation,
        advertise,
        version,
    } = msg
    else {
        return Err("the first frame was not a hello".into());
    };
    if version.to_native() != frame::PROTOCOL_VERSION {
        return Err(format!(
            "peer speaks cluster protocol {}, this node {}",
            version.to_native(),
            frame::PROTOCOL_VERSION
        ));
    }
    let advertise: SocketAddr = advertise
        .as_str()
        .parse()
        .map_err(|_| format!("bad advertised address {:?}", advertise.as_str()))?;
    Ok(Hello {
        node_id: node_id.as_str().into(),
        incarnation: incarnation.to_native(),
        advertise,
    })
}
