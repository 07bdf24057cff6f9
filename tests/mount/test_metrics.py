"""Prometheus metrics (metrics_listen) through real mounts: real programs
(cp, cat, getfattr, the CLI) do things, the metrics are scraped over HTTP
with urllib and parsed with prometheus_client's own parser, and the figures
must have moved by what was done: requests by operation and errno, a
restore wait per blocked open, files per state as `tierfs status` counts
them, jobs as the catalog counts them, a policy run and what it archived,
an unreachable archive tier. Off by default (no listening socket), the port
closed at unmount, bad values refused."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tierfs.catalog import open_catalog
from tests.conftest import wait_for
from tests.mount.test_policy import COLD   # archive to vault what is 90 days idle and 1MB+, every 2s

pytestmark = pytest.mark.mount

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """{(sample name, sorted label items): value} of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: dict, name: str, label: str) -> dict:
    return {dict(k)[label]: v for (n, k), v in samples.items() if n == name}


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on: its socket inodes (/proc/PID/fd)
    looked up in /proc/net/tcp{,6} in state LISTEN (0A)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def status(m) -> dict:
    return json.loads(m.cli("status", m.mnt, "--json").stdout)[0]


def test_metrics_count_what_the_mount_did(make_mount, catalog_url):
    port = free_port()
    m = make_mount(config=f'metrics_listen = "127.0.0.1:{port}"\npassthrough = false\n' + COLD,
                   catalog_url=catalog_url, start=False)
    m.write_config()
    cat = open_catalog(m.catalog_url)
    cat.init()
    assert cat.acquire_lease("policy", "test", 3600)   # the rule waits until the test lets it run
    m.start()
    assert port in listening_ports(m.pid)

    before = scrape(port)
    assert value(before, "tierfs_info", version="0.1.0", catalog=catalog_url.split(":")[0],
                 session=status(m)["mounts"][0]["session"]) == 1
    m.sh("""
        head -c 300000 /dev/urandom > a
        head -c 200000 /dev/urandom > b
        head -c 1500000 /dev/urandom > old
        touch -d '100 days ago' old
    """)
    written = scrape(port)
    m.sh("""
        cat a b > /dev/null
        cat a > /dev/null
        getfattr -n user.nosuch a || true
    """)
    after = scrape(port)
    op = "tierfs_fuse_request_duration_seconds_count"
    assert value(written, op, op="create") - value(before, op, op="create") == 3
    assert value(written, op, op="write") - value(before, op, op="write") >= 3
    assert value(after, op, op="open") - value(written, op, op="open") == 3   # cat a b; cat a
    assert value(after, op, op="create") == value(written, op, op="create")
    assert value(after, op, op="read") > value(written, op, op="read")   # without passthrough: the daemon reads
    assert value(after, "tierfs_fuse_request_errors_total", op="getxattr", errno="ENODATA") == 1
    calls = "tierfs_catalog_call_duration_seconds_count"
    assert value(after, calls, call="create") - value(before, calls, call="create") == 3

    # A blocking open of an archived file waits for its restore: one wait, restored.
    m.cli("archive", "--wait", "--timeout", "60", m.path("b"))
    assert m.state("b") == "archived"
    assert value(scrape(port), "tierfs_restore_wait_seconds_count", outcome="restored") == 0
    m.sh("cat b > /dev/null")
    assert m.state("b") == "dual"
    restored = scrape(port)
    assert value(restored, "tierfs_restore_wait_seconds_count", outcome="restored") == 1
    assert value(restored, "tierfs_restore_wait_seconds_sum", outcome="restored") > 0

    # The daemon's policy run archives `old`, and only it.
    assert cat.acquire_lease("policy", "test", 0)
    wait_for(lambda: m.state("old") == "archived", timeout=60, what="the policy archiving old")
    ran = wait_for(lambda: (s := scrape(port)) and value(s, "tierfs_policy_runs_total", rule="cold",
                                                         trigger="interval") >= 1 and s, what="a policy run counted")
    assert value(ran, "tierfs_policy_files_total", rule="cold", action="archive") == 1
    assert value(ran, "tierfs_policy_bytes_total", rule="cold", action="archive") == 1500000

    # The catalog figures agree with `tierfs status` and the catalog's own counts (they may be a second old).
    def agree():
        s, st = scrape(port), status(m)
        files = by_label(s, "tierfs_files", "state")
        tiers = {n: (v, value(s, "tierfs_tier_bytes", tier=n)) for n, v in by_label(s, "tierfs_tier_objects",
                                                                                        "tier").items()}
        jobs = {(dict(k)["state"], dict(k)["kind"]): v for (n, k), v in s.items() if n == "tierfs_jobs"}
        want_jobs = {(state, kind): n for state, kinds in cat.stats().jobs.items() for kind, n in kinds.items()}
        return (files == {k: v["files"] for k, v in st["states"].items()}
                and tiers == {n: (t["files"], t["bytes"]) for n, t in st["tiers"].items()}
                and jobs == want_jobs) and s
    s = wait_for(agree, timeout=20, interval=0.5, what="metrics agreeing with tierfs status")
    assert by_label(s, "tierfs_files", "state") == {"online": 1, "dual": 1, "archived": 1}
    assert value(s, "tierfs_jobs", kind="archive", state="done") == 2
    assert value(s, "tierfs_jobs", kind="restore", state="done") == 1
    assert value(s, "tierfs_oldest_restore_age_seconds") == 0
    assert by_label(s, "tierfs_tier_healthy", "tier") == {"disk": 1, "vault": 1}
    assert value(s, "tierfs_catalog_figures_age_seconds") < 5
    cat.close()

    m.stop()
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    assert "metrics server on 127.0.0.1:%d stopped" % port in m.log()


def test_an_unreachable_archive_tier_shows(make_mount):
    """The vault's directory gone: the restore an open queued waits (its age
    grows), the vault is unhealthy and its errors are counted."""
    port = free_port()
    m = make_mount(config=f'metrics_listen = "127.0.0.1:{port}"\nrestore_mode = "error"\n'
                          'job_retry_delay = "1s"\n')
    m.sh("head -c 50000 /dev/urandom > f")
    m.cli("archive", "--wait", "--timeout", "60", m.path("f"))
    vault = os.path.join(m.home, "vault")
    os.rename(vault, vault + ".away")
    try:
        r = m.sh("cat f", check=False)
        assert "Resource temporarily unavailable" in r.stderr   # restore_mode = error: EAGAIN, restore queued

        def shows():
            s = scrape(port)
            return (value(s, "tierfs_tier_healthy", tier="vault") == 0
                    and value(s, "tierfs_oldest_restore_age_seconds") > 1 and s)
        s = wait_for(shows, timeout=30, interval=0.5, what="the vault unhealthy and the restore waiting")
        assert value(s, "tierfs_tier_healthy", tier="disk") == 1
        assert value(s, "tierfs_tier_errors_total", tier="vault", error="tier_unavailable") >= 1
        assert value(s, "tierfs_jobs", kind="restore", state="pending") == 1
        assert value(s, "tierfs_fuse_request_errors_total", op="open", errno="EAGAIN") == 1
    finally:
        os.rename(vault + ".away", vault)


def test_metrics_are_off_by_default(mount):
    assert listening_ports(mount.pid) == set()
    assert "metrics served" not in mount.log()


@pytest.mark.parametrize("bad", ["9108", "localhost", "127.0.0.1:0", "127.0.0.1:99999", "[::1:9108"])
def test_a_bad_metrics_listen_is_refused(make_mount, bad):
    m = make_mount(start=False)
    m.write_config()
    r = m.cli("mount", m.mnt, "--config", m.config_path, "-o", f"metrics_listen={bad}", check=False)
    assert r.returncode == 6, r
    assert re.fullmatch(r"tierfs: configuration: metrics_listen: expected HOST:PORT like '127.0.0.1:9108' \(port 1-65535\), "
                        r"got .*\n", r.stderr), r.stderr
    assert not os.path.ismount(m.mnt)


def test_a_port_in_use_stops_the_mount(make_mount):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        m = make_mount(start=False)
        m.write_config()
        r = m.cli("mount", m.mnt, "--config", m.config_path, "-o", f"metrics_listen=127.0.0.1:{port}",
                  check=False)
    assert r.returncode == 6, r
    assert f"metrics_listen = '127.0.0.1:{port}': cannot listen there: Address already in use" in r.stderr
    assert not os.path.ismount(m.mnt)
    assert subprocess.run(["findmnt", m.mnt], capture_output=True).returncode == 1
    m.start()   # the refused daemon ended its session: nothing to recover
    assert "did not unmount cleanly" not in m.log() + m.cli("status", m.mnt).stdout
