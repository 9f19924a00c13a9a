"""The real inovex/mqtt-stresser's report as `ringmq-bench stresser --json`.

    python3 bench/mqtt_stresser.py REPORT TIME TICKS CLK_TCK ARGS... > RUN.json

REPORT is what mqtt-stresser printed (its `report.go`: "# Configuration",
"# Results", then Fastest / Slowest / Median msg/sec of "# Publishing
Throughput" and "# Receiving Througput"); TIME the `real user sys` seconds
bash's `time` gave for the process (TIMEFORMAT='%3R %3U %3S'); TICKS the
broker's utime+stime over the run in clock ticks, CLK_TCK ticks a second;
ARGS the flags it was run with (for the QoS, which it does not print).
Written by bench/lib.sh's mqtt_stresser_json, so that the tables of
bench/peers.sh and bench/targets.sh read both generators the same way.

mqtt-stresser's per-worker rates are its own: publish time from the first
publish to the publisher's disconnect, receive time from then to the
subscriber's last message (its client holds deliveries back while the
worker publishes), so the receive rate is how fast the client empties its
own queue. Wall time (the process, start-up and ramp-up included) and
broker CPU per received message are measured around it, as ringmq-bench
does for its own stresser.
"""
import json
import re
import sys


def flag(args, name, default):
    """The value of `-name V` or `-name=V` in ARGS."""
    for i, arg in enumerate(args):
        if arg == f"-{name}" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"-{name}="):
            return arg.split("=", 1)[1]
    return default


def main():
    report, timing, ticks, clk_tck, *args = sys.argv[1:]
    text = open(report).read()
    real, user, system = (float(x) for x in open(timing).read().split())

    def count(label):
        m = re.search(rf"^-?\s*{label}:\s+(\d+)", text, re.M)
        return int(m.group(1)) if m else 0

    def rates(section):
        # The section's Fastest/Slowest/Median lines, None if not printed.
        m = re.search(rf"# {section}\n(.*?)(?:\n\n|\Z)", text, re.S)
        if not m:
            return None
        got = dict(re.findall(r"^(\w+): (\d+) msg/sec", m.group(1), re.M))
        return {k.lower(): float(v) for k, v in got.items()} or None

    clients = int(flag(args, "num-clients", 10))
    per_client = int(flag(args, "num-messages", 10))
    received = count("Received Messages")
    cpu = int(ticks) / int(clk_tck)
    print(json.dumps({
        "generator": "mqtt-stresser",
        "clients": clients,
        "messages_per_client": per_client,
        "publisher_qos": int(flag(args, "publisher-qos", 0)),
        "subscriber_qos": int(flag(args, "subscriber-qos", 0)),
        "published": count("Published Messages"),
        "received": received,
        "expected": clients * per_client,
        "completed": count("Completed"),
        "errors": count("Errors"),
        "timeouts": count("TimeoutExceeded"),
        "publishing": rates("Publishing Throughput"),
        "receiving": rates("Receiving Througput"),
        "wall_seconds": real,
        "aggregate_per_second": received / real if real else None,
        "bench_cpu_seconds": user + system,
        "broker_cpu_seconds": cpu,
        "broker_cpu_us_per_message": cpu * 1e6 / received if received else None,
    }, indent=2))


if __name__ == "__main__":
    main()
