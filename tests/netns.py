"""Separate "hosts" on one machine for tests: network namespaces on a
private bridge (iproute2; needs root).

A Net owns one bridge in the root namespace holding 10.213.N.254/24 (so the
test process reaches every host) and one namespace per host, each joined
to the bridge by a veth pair whose inside end is "eth0" with 10.213.N.(i+1).
Names carry the pid, so parallel runs do not collide; N is a /24 of
10.213/16 that no route of this machine uses yet. Nothing talks to any
address outside the subnet the Net made.

Processes go into a host with `nsenter --net=/run/netns/NAME` (Host.prefix),
not `ip netns exec`, which also unshares the mount namespace: a FUSE mount
made there would be invisible to the test. Net.close() (also at interpreter
exit, and idempotent) deletes every namespace, veth and the bridge it made.
"""

from __future__ import annotations

import atexit
import os
import subprocess


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, a container without CAP_NET_ADMIN)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _free_subnet() -> int:
    used = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "addr").stdout
    start = os.getpid() % 200 + 20
    for k in range(200):
        n = (start + k) % 250 + 1
        if f"10.213.{n}." not in used:
            return n
    raise NetnsUnavailable("no free /24 in 10.213.0.0/16")


class Host:
    """One namespace: its name, address, and the host-side veth (the cable)."""

    def __init__(self, net: "Net", index: int, label: str):
        self.label = label
        self.ns = f"{net.tag}n{index}"
        self.veth = f"{net.tag}v{index}"
        self.ip = f"10.213.{net.subnet}.{index + 1}"

    @property
    def prefix(self) -> list[str]:
        """Command prefix running a program with this host's network."""
        return ["nsenter", f"--net=/run/netns/{self.ns}"]

    def link(self, up: bool) -> None:
        """Plug or unplug the cable: a network partition of this host (both ends' carrier goes)."""
        _ip("link", "set", self.veth, "up" if up else "down")


class Net:
    def __init__(self):
        self.tag = f"tf{os.getpid() % 10**7}"   # interface names: at most 15 characters
        self.bridge = f"{self.tag}br"
        self.hosts: list[Host] = []
        self.subnet = 0
        self._made_bridge = False
        atexit.register(self.close)

    @staticmethod
    def check() -> None:
        """Raise NetnsUnavailable with the reason unless namespaces can be made here."""
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        probe = f"tfprobe{os.getpid()}"
        try:
            r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            raise NetnsUnavailable("iproute2 (ip) is not installed") from None
        if r.returncode != 0:
            raise NetnsUnavailable(f"ip netns add is not permitted: {r.stderr.strip()}")
        _ip("netns", "del", probe, check=False)

    def start(self) -> "Net":
        self.check()
        self.subnet = _free_subnet()
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        _ip("addr", "add", f"10.213.{self.subnet}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, label: str) -> Host:
        h = Host(self, len(self.hosts), label)
        self.hosts.append(h)
        _ip("netns", "add", h.ns)
        _ip("link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
        _ip("link", "set", h.veth, "master", self.bridge)
        _ip("link", "set", h.veth, "up")
        # nsenter, not `ip -n`: that one also makes a mount namespace ("mount --make-rslave /"), which
        # fails where / is not a mount point (a chroot, as in a fresh-machine check)
        for args in (("link", "set", "lo", "up"), ("addr", "add", f"{h.ip}/24", "dev", "eth0"),
                     ("link", "set", "eth0", "up")):
            r = subprocess.run([*h.prefix, "ip", *args], capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                raise RuntimeError(f"ip {' '.join(args)} in {h.ns}: {r.stderr.strip()}")
        return h

    def close(self) -> None:
        """Remove every namespace and link this Net made (deleting a namespace deletes its veth pair)."""
        for h in self.hosts:
            _ip("link", "del", h.veth, check=False)
            _ip("netns", "del", h.ns, check=False)
        self.hosts = []
        if self._made_bridge:
            _ip("link", "del", self.bridge, check=False)
            self._made_bridge = False
