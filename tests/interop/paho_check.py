#!/usr/bin/env python3
"""Interoperability check of ringmq against paho-mqtt (v2 callback API).

Usage: paho_check.py HOST PORT

Covers, for MQTT 3.1.1 and 5.0: publish/subscribe at QoS 0/1/2, retained
messages, wills, and (5.0) publish properties passed through unchanged.
Exits 0 when every check passes, 1 on the first failure.
"""

import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import paho_common
from paho_common import check, versions

HOST = sys.argv[1]
PORT = int(sys.argv[2])


def Peer(name, protocol, will=None):
    return paho_common.Peer(f"paho-{name}", protocol, HOST, PORT, will=will)


def check_qos(tag, protocol):
    topic = f"interop/py/{tag}/qos"
    for granted in (0, 1, 2):
        sub = Peer(f"{tag}-sub{granted}", protocol)
        sub.subscribe(topic, granted)
        pub = Peer(f"{tag}-pub{granted}", protocol)
        for qos in (0, 1, 2):
            payload = f"qos{qos}".encode()
            pub.publish(topic, payload, qos=qos)
            msg = sub.next_message()
            check(msg.payload == payload, f"{tag}: payload {msg.payload!r} != {payload!r}")
            check(
                msg.qos == min(qos, granted),
                f"{tag}: published {qos} granted {granted} delivered {msg.qos}",
            )
        sub.expect_none()
        pub.close()
        sub.close()


def check_retained(tag, protocol):
    topic = f"interop/py/{tag}/retained"
    pub = Peer(f"{tag}-rpub", protocol)
    pub.publish(topic, b"kept", qos=1, retain=True)
    sub = Peer(f"{tag}-rsub", protocol)
    sub.subscribe(topic, 1)
    msg = sub.next_message()
    check(msg.payload == b"kept", f"{tag}: retained payload {msg.payload!r}")
    check(msg.retain, f"{tag}: retained message without RETAIN flag")
    pub.publish(topic, b"", qos=1, retain=True)  # clear it
    sub.next_message()  # the live (empty) publication
    late = Peer(f"{tag}-rlate", protocol)
    late.subscribe(topic, 1)
    late.expect_none()
    for p in (pub, sub, late):
        p.close()


def check_will(tag, protocol):
    topic = f"interop/py/{tag}/will"
    watcher = Peer(f"{tag}-watch", protocol)
    watcher.subscribe(topic, 1)
    polite = Peer(f"{tag}-polite", protocol, will=(topic, b"polite", 1, False))
    polite.close()
    watcher.expect_none(1.0)
    doomed = Peer(f"{tag}-doomed", protocol, will=(topic, b"gone", 1, False))
    doomed.drop()
    msg = watcher.next_message()
    check(msg.payload == b"gone", f"{tag}: will payload {msg.payload!r}")
    watcher.close()


def check_v5_properties():
    topic = "interop/py/v5/props"
    sub = Peer("props-sub", mqtt.MQTTv5)
    sub.subscribe(topic, 1)
    pub = Peer("props-pub", mqtt.MQTTv5)
    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.ContentType = "application/json"
    props.ResponseTopic = "interop/py/v5/reply"
    props.CorrelationData = b"\x00\x01corr"
    props.UserProperty = [("a", "1"), ("b", "2"), ("a", "3")]
    pub.publish(topic, b'{"x":1}', qos=1, properties=props)
    msg = sub.next_message()
    got = msg.properties
    check(msg.payload == b'{"x":1}', f"payload {msg.payload!r}")
    check(getattr(got, "PayloadFormatIndicator", None) == 1, "PayloadFormatIndicator lost")
    check(getattr(got, "ContentType", None) == "application/json", "ContentType lost")
    check(getattr(got, "ResponseTopic", None) == "interop/py/v5/reply", "ResponseTopic lost")
    check(getattr(got, "CorrelationData", None) == b"\x00\x01corr", "CorrelationData lost")
    check(
        getattr(got, "UserProperty", None) == [("a", "1"), ("b", "2"), ("a", "3")],
        f"UserProperty changed: {getattr(got, 'UserProperty', None)}",
    )
    pub.close()
    sub.close()


def main():
    checks = []
    for tag, protocol in versions():
        checks += [
            (f"{tag} qos", lambda t=tag, p=protocol: check_qos(t, p)),
            (f"{tag} retained", lambda t=tag, p=protocol: check_retained(t, p)),
            (f"{tag} will", lambda t=tag, p=protocol: check_will(t, p)),
        ]
    checks.append(("v5 properties", check_v5_properties))
    return paho_common.run(checks, "paho")


if __name__ == "__main__":
    sys.exit(main())
