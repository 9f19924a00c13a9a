#!/usr/bin/env python3
"""Idle MQTT connections over TLS (or plain TCP): the broker's memory per
connection.

    bench/tls_idle.py HOST PORT CONNECTIONS BROKER_PID [CAFILE]

Opens CONNECTIONS connections one after another, from 127.0.0.2 to
127.0.0.5 in turn: with CAFILE, a TLS handshake (Python's ssl, verifying
the broker against CAFILE for the name localhost) then a 3.1.1 CONNECT
(keep-alive 60 s); without, the CONNECT on plain TCP. Checks each CONNACK
and prints the broker's VmRSS (/proc/PID/status) before and after, per
connection. The TLS counterpart of `ringmq-bench conn` and
bench/ws_idle.py, standard library only.
"""

import socket
import ssl
import struct
import sys
import time

from idle_common import SOURCES, rss_kib


def connect_packet(client_id):
    client_id = client_id.encode()
    # Protocol name MQTT, level 4, clean session, keep-alive 60 s.
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(client_id)) + client_id
    return bytes([0x10, len(body)]) + body


def open_connection(host, port, n, context):
    sock = socket.socket()
    # A broker that stops answering fails the run instead of hanging it.
    sock.settimeout(10)
    sock.bind((SOURCES[n % len(SOURCES)], 0))
    sock.connect((host, port))
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(connect_packet(f"tls-idle-{n}"))
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        if not chunk:
            raise RuntimeError("closed before CONNACK")
        connack += chunk
    if connack != b"\x20\x02\x00\x00":
        raise RuntimeError(f"unexpected answer {connack!r}")
    return sock


def main():
    host, port, count, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    context = None
    if len(sys.argv) > 5:
        context = ssl.create_default_context(cafile=sys.argv[5])
    before = rss_kib(pid)
    start = time.monotonic()
    connections = [open_connection(host, port, n, context) for n in range(count)]
    seconds = time.monotonic() - start
    time.sleep(1)
    after = rss_kib(pid)
    kind = "tls" if context else "tcp"
    print(
        f"{kind} {len(connections)} idle connections in {seconds:.1f} s: broker VmRSS "
        f"{before} KiB before, {after} KiB after: "
        f"{(after - before) * 1024 / count:.0f} bytes per connection"
    )


if __name__ == "__main__":
    main()
