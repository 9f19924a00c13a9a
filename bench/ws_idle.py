#!/usr/bin/env python3
"""Idle MQTT-over-WebSocket connections: the broker's memory per connection.

    bench/ws_idle.py HOST PORT CONNECTIONS BROKER_PID

Opens CONNECTIONS WebSocket connections one after another (HTTP upgrade to
/mqtt with subprotocol mqtt, then a 3.1.1 CONNECT in one masked binary
frame, keep-alive 60 s), from 127.0.0.2 to 127.0.0.5 in turn, checks each
CONNACK, and prints the broker's VmRSS (/proc/PID/status) before and after,
per connection. `ringmq-bench conn` does the same over plain TCP; this is
its WebSocket counterpart, standard library only.
"""

import base64
import os
import socket
import struct
import sys
import time

from idle_common import SOURCES, rss_kib


def client_frame(payload):
    """One final binary frame, masked as RFC 6455 requires of clients."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x82, 0x80 | len(payload)]) + mask + masked


def connect_packet(client_id):
    client_id = client_id.encode()
    # Protocol name MQTT, level 4, clean session, keep-alive 60 s.
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(client_id)) + client_id
    return bytes([0x10, len(body)]) + body


def open_connection(host, port, n):
    sock = socket.socket()
    sock.bind((SOURCES[n % len(SOURCES)], 0))
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /mqtt HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("closed during the upgrade")
        response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {response[:40]!r}")
    sock.sendall(client_frame(connect_packet(f"ws-idle-{n}")))
    # A binary frame of 4 bytes holding CONNACK, session not present, accepted.
    connack = sock.recv(6)
    if connack != b"\x82\x04\x20\x02\x00\x00":
        raise RuntimeError(f"unexpected answer {connack!r}")
    return sock


def main():
    host, port, count, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    before = rss_kib(pid)
    start = time.monotonic()
    connections = [open_connection(host, port, n) for n in range(count)]
    seconds = time.monotonic() - start
    time.sleep(1)
    after = rss_kib(pid)
    print(
        f"ws {len(connections)} idle connections in {seconds:.1f} s: broker VmRSS "
        f"{before} KiB before, {after} KiB after: "
        f"{(after - before) * 1024 / count:.0f} bytes per connection"
    )


if __name__ == "__main__":
    main()
