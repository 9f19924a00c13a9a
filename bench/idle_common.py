"""What the idle-connection probes (tls_idle.py, ws_idle.py, sub_idle.py) share."""

# Local source addresses the probes spread their connections over: one
# address has only some 28,000 ephemeral ports.
SOURCES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


def rss_kib(pid, field="VmRSS"):
    """A memory figure of process `pid` from /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")
