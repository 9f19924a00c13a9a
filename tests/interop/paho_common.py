"""What the paho-mqtt interoperability scripts share: a client with its
network loop running and received messages queued, and a runner that
reports each check and stops at the first failure."""

import queue
import socket
import time
import uuid

import paho.mqtt.client as mqtt

TIMEOUT = 5.0


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def versions():
    return [("v311", mqtt.MQTTv311), ("v5", mqtt.MQTTv5)]


class Peer:
    """A paho client (v2 callback API) over TCP, or over WebSocket on the
    broker's `/mqtt` path, connected and with its CONNACK checked."""

    def __init__(self, client_id, protocol, host, port, will=None, websocket=False):
        self.client_id = f"{client_id}-{uuid.uuid4().hex[:8]}"
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
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos=qos, retain=retain)
        self.client.connect(host, port, keepalive=30)
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

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=TIMEOUT)
        check(info.is_published(), f"publish to {topic} at QoS {qos} not completed")

    def next_message(self):
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"{self.client_id}: no message within {TIMEOUT}s") from None

    def expect_none(self, secs=0.7):
        try:
            msg = self.messages.get(timeout=secs)
        except queue.Empty:
            return
        raise Failure(f"{self.client_id}: unexpected message on {msg.topic}")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self):
        """Vanish without DISCONNECT (an abnormal disconnect)."""
        sock = self.client.socket()
        self.client.loop_stop()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def run(checks, suite):
    """Runs (name, function) checks in order; returns the exit status."""
    for name, fn in checks:
        start = time.monotonic()
        try:
            fn()
        except Exception as e:  # any exception is a failed check
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            return 1
        print(f"ok   {name} ({time.monotonic() - start:.1f}s)", flush=True)
    print(f"all {suite} checks passed")
    return 0
