#!/usr/bin/env python3
"""Interoperability check of ringmq's WebSocket listener against paho-mqtt
(v2 callback API, transport="websockets").

Usage: paho_websocket.py HOST TCP_PORT WS_PORT

For MQTT 3.1.1 and 5.0: QoS 0/1/2 round trips between WebSocket clients,
and between a WebSocket and a TCP client in both directions.
Exits 0 when every check passes, 1 on the first failure.
"""

import queue
import sys
import time
import uuid

import paho.mqtt.client as mqtt

TIMEOUT = 5.0
HOST = sys.argv[1]
TCP_PORT = int(sys.argv[2])
WS_PORT = int(sys.argv[3])


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


class Peer:
    """A paho client over WebSocket (or TCP) with its network loop running
    and received messages collected in a queue."""

    def __init__(self, name, protocol, websocket=True):
        self.client_id = f"paho-ws-{name}-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            transport="websockets" if websocket else "tcp",
        )
        if websocket:
            # paho offers the "mqtt" subprotocol; the path is the broker's.
            self.client.ws_set_options(path="/mqtt")
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connacks.put(rc)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put(rcs)
        self.client.connect(HOST, WS_PORT if websocket else TCP_PORT, keepalive=30)
        self.client.loop_start()
        try:
            rc = self.connacks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"{self.client_id}: no CONNACK within {TIMEOUT}s") from None
        check(not rc.is_failure, f"{self.client_id}: CONNACK {rc}")

    def subscribe(self, topic, qos):
        self.client.subscribe(topic, qos)
        codes = self.subacks.get(timeout=TIMEOUT)
        check(
            all(not c.is_failure and c.value == qos for c in codes),
            f"SUBACK for {topic}: {codes}",
        )

    def publish(self, topic, payload, qos):
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=TIMEOUT)
        check(info.is_published(), f"publish to {topic} at QoS {qos} not completed")

    def next_message(self):
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"{self.client_id}: no message within {TIMEOUT}s") from None

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


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
    for version, protocol in (("v311", mqtt.MQTTv311), ("v5", mqtt.MQTTv5)):
        for tag, sub_ws, pub_ws in (
            ("ws-to-ws", True, True),
            ("tcp-to-ws", True, False),
            ("ws-to-tcp", False, True),
        ):
            name = f"{version} {tag}"
            checks.append(
                (name, lambda n=f"{version}-{tag}", p=protocol, s=sub_ws, w=pub_ws: round_trips(n, p, s, w))
            )
    for name, fn in checks:
        start = time.monotonic()
        try:
            fn()
        except Exception as e:  # any exception is a failed check
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            return 1
        print(f"ok   {name} ({time.monotonic() - start:.1f}s)", flush=True)
    print("all paho websocket checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
