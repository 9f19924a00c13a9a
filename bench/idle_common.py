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


def kernel_kib():
    """The kernel's memory that grows with TCP connections, system-wide:
    slab (socket, inode, dentry and file objects; `Slab` in
    /proc/meminfo) and TCP buffer pages (/proc/net/sockstat `TCP: mem`,
    in 4 KiB pages), in KiB."""
    slab = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Slab:"):
                slab = int(line.split()[1])
    pages = 0
    with open("/proc/net/sockstat") as sockstat:
        for line in sockstat:
            if line.startswith("TCP:"):
                fields = line.split()
                pages = int(fields[fields.index("mem") + 1])
    return slab, pages * 4
