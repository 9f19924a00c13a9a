#!/usr/bin/env python3
"""Interoperability check of ringmq's WebSocket listener against paho-mqtt
(v2 callback API, transport="websockets").

Usage: paho_websocket.py HOST TCP_PORT WS_PORT

For MQTT 3.1.1 and 5.0: QoS 0/1/2 round trips between WebSocket clients,
and between a WebSocket and a TCP client in both directions.
Exits 0 when every check passes, 1 on the first failure.
"""

import sys

import paho_common
from paho_common import check

HOST = sys.argv[1]
TCP_PORT = int(sys.argv[2])
WS_PORT = int(sys.argv[3])


def Peer(name, protocol, websocket=True):
    port = WS_PORT if websocket else TCP_PORT
    return paho_common.Peer(f"paho-ws-{name}", protocol, HOST, port, websocket=websocket)


def round_trips(tag, protocol, sub_ws, pub_ws):
    """Every QoS from a publisher to a subscriber granted QoS 2, so the
    delivered QoS is the published one."""
    topic = f"interop/ws/{tag}"
    sub = Peer(f"{tag}-sub", protocol, websocket=sub_ws)
    sub.subscribe(topic, 2)
    pub = Peer(f"{tag}-pub", protocol, websocket=pub_ws)
    for qos in (0, 1, 2):
        payload = f"{tag} qos{qos}".encode() * 50
        pub.publish(topic, payload, qos)
        msg = sub.next_message()
        check(msg.payload == payload, f"{tag}: payload {msg.payload[:40]!r}...")
        check(msg.qos == qos, f"{tag}: published {qos}, delivered {msg.qos}")
    pub.close()
    sub.close()


def main():
    checks = []
    for version, protocol in paho_common.versions():
        for tag, sub_ws, pub_ws in (
            ("ws-to-ws", True, True),
            ("tcp-to-ws", True, False),
            ("ws-to-tcp", False, True),
        ):
            name = f"{version} {tag}"
            checks.append(
                (name, lambda n=f"{version}-{tag}", p=protocol, s=sub_ws, w=pub_ws: round_trips(n, p, s, w))
            )
    return paho_common.run(checks, "paho websocket")


if __name__ == "__main__":
    sys.exit(main())
