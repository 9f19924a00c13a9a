#!/usr/bin/env python3
"""Idle MQTT connections with a subscription each: the broker's memory per
connection.

    bench/sub_idle.py HOST PORT CONNECTIONS BROKER_PID [--v5] [--no-subscribe]

Opens CONNECTIONS TCP connections one after another, from 127.0.0.2 to
127.0.0.5 in turn: CONNECT (3.1.1, or v5 with --v5; clean, keep-alive
60 s), then SUBSCRIBE to `idle/N` at QoS 0 unless --no-subscribe, checking
each CONNACK and SUBACK. Prints the broker's VmRSS (/proc/PID/status)
before and a second after, per connection, and the same for RssAnon,
which leaves out the binary's pages the page cache maps in, and the
kernel's growth beside it (slab and TCP buffer pages, system-wide, so
both ends of every connection when client and broker share the host).
`ringmq-bench conn` measures
idle connections without subscriptions; this adds the subscription, and
v5, standard library only.
"""

import socket
import struct
import sys
import time

from idle_common import SOURCES, kernel_kib, rss_kib


def packet(kind, body):
    # Every packet here is shorter than 128 bytes: one length byte.
    return bytes([kind, len(body)]) + body


def string(text):
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def connect_packet(client_id, v5):
    level, properties = (b"\x05", b"\x00") if v5 else (b"\x04", b"")
    # Clean session, keep-alive 60 s.
    return packet(0x10, string("MQTT") + level + b"\x02\x00\x3c" + properties + string(client_id))


def subscribe_packet(topic, v5):
    properties = b"\x00" if v5 else b""
    return packet(0x82, b"\x00\x01" + properties + string(topic) + b"\x00")


def read_packet(sock):
    header = sock.recv(2, socket.MSG_WAITALL)
    if len(header) < 2:
        raise RuntimeError("closed")
    body = sock.recv(header[1], socket.MSG_WAITALL) if header[1] else b""
    return header[0], body


def open_connection(host, port, n, v5, subscribe):
    sock = socket.socket()
    sock.bind((SOURCES[n % len(SOURCES)], 0))
    sock.connect((host, port))
    sock.sendall(connect_packet(f"sub-idle-{n}", v5))
    kind, body = read_packet(sock)
    if kind != 0x20 or body[1] != 0:
        raise RuntimeError(f"CONNACK expected, got {kind:#x} {body!r}")
    if subscribe:
        sock.sendall(subscribe_packet(f"idle/{n}", v5))
        kind, body = read_packet(sock)
        if kind != 0x90 or body[-1] != 0:
            raise RuntimeError(f"SUBACK granting QoS 0 expected, got {kind:#x} {body!r}")
    return sock


def main():
    host, port, count, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    v5 = "--v5" in sys.argv[5:]
    subscribe = "--no-subscribe" not in sys.argv[5:]
    before, anon_before = rss_kib(pid, "VmRSS"), rss_kib(pid, "RssAnon")
    slab_before, buffers_before = kernel_kib()
    start = time.monotonic()
    connections = [open_connection(host, port, n, v5, subscribe) for n in range(count)]
    seconds = time.monotonic() - start
    time.sleep(1)
    after, anon_after = rss_kib(pid, "VmRSS"), rss_kib(pid, "RssAnon")
    slab_after, buffers_after = kernel_kib()
    per = (after - before) * 1024 / count
    anon = (anon_after - anon_before) * 1024 / count
    print(
        f"{count} connections ({'v5' if v5 else '3.1.1'}, "
        f"{'one subscription each' if subscribe else 'no subscription'}) in {seconds:.1f} s; "
        f"broker VmRSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, {per:.0f} bytes per connection "
        f"({anon:.0f} of them anonymous: RssAnon); kernel, both ends: slab "
        f"{(slab_after - slab_before) * 1024 / count:.0f} and TCP buffers "
        f"{(buffers_after - buffers_before) * 1024 / count:.0f} bytes per connection"
    )
    for sock in connections:
        sock.close()


if __name__ == "__main__":
    main()
