"""`tierfs status`, `find` and `du` through the real CLI on real mounts
(every catalog backend), their errors and exit codes, and `find` on a big
catalog built by bulk inserts.

Measure `find --state archived` on a million entries:
    .venv/bin/python -m tests.system.test_cli_admin 1000000
"""

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from tierfs import mounts
from tests.conftest import put_file as put, Mount, wait_for

pytestmark = pytest.mark.mount

DAY_NS = 86400 * 10**9



def lines(out: str) -> list[str]:
    return sorted(x for x in out.splitlines() if x)


@pytest.fixture
def tree(make_mount, catalog_url):
    """A mount on each catalog with /a/{x.raw 2MB archived, y.txt 10kB (old atime), b/z.raw 3MB},
    /c/w.raw 500kB dual, /top.txt 1 byte owned by nobody."""
    m = make_mount(catalog_url=catalog_url)
    put(m, "a/x.raw", 2_000_000)
    put(m, "a/y.txt", 10_000)
    put(m, "a/b/z.raw", 3_000_000)
    put(m, "c/w.raw", 500_000)
    put(m, "top.txt", 1)
    os.chown(m.path("top.txt"), 65534, 65534)
    os.utime(m.path("a/y.txt"), ns=(time.time_ns() - 100 * DAY_NS, time.time_ns() - 100 * DAY_NS))
    m.cli("archive", "--wait", "--timeout", "60", m.path("a/x.raw"))
    m.cli("archive", "--wait", "--timeout", "60", "--keep-online", m.path("c/w.raw"))
    return m


def test_find_answers_from_the_catalog(tree):
    m = tree
    find = lambda *a: m.cli("find", *a).stdout  # noqa: E731
    assert lines(find(m.mnt)) == ["/a/b/z.raw", "/a/x.raw", "/a/y.txt", "/c/w.raw", "/top.txt"]
    assert lines(find(m.mnt, "--state", "archived")) == ["/a/x.raw"]
    assert lines(find(m.mnt, "--state", "archived", "--state", "dual")) == ["/a/x.raw", "/c/w.raw"]
    assert lines(find(m.mnt, "--tier", "vault")) == ["/a/x.raw", "/c/w.raw"]  # archive copies
    assert lines(find(m.mnt, "--tier", "disk")) == ["/a/b/z.raw", "/a/y.txt", "/c/w.raw", "/top.txt"]
    assert lines(find(m.mnt, "--name", "*.raw", "--size", "+1M")) == ["/a/b/z.raw", "/a/x.raw"]
    assert lines(find(m.mnt, "--size", "-1M", "--size", "+1")) == ["/a/y.txt", "/c/w.raw"]
    assert lines(find(m.mnt, "--size", "1")) == ["/top.txt"]
    assert lines(find(m.mnt, "--inactive", "90d")) == ["/a/y.txt"]
    assert lines(find(m.mnt, "--older", "1d")) == []
    assert lines(find(m.mnt, "--owner", "nobody")) == ["/top.txt"]
    assert lines(find(m.mnt, "--owner", "0", "--group", "0", "--name", "?.raw")) == \
        ["/a/b/z.raw", "/a/x.raw", "/c/w.raw"]
    # a subtree, given as a path inside the mount, relative or absolute output
    assert lines(find(m.path("a"))) == ["/a/b/z.raw", "/a/x.raw", "/a/y.txt"]
    assert lines(find("-a", m.path("a", "b"))) == [m.path("a", "b", "z.raw")]
    r = subprocess.run([sys.executable, "-m", "tierfs.cli", "find", "--state", "dual"], cwd=m.path("c"),
                       capture_output=True, text=True, env=m.env)
    assert r.returncode == 0 and r.stdout == "/c/w.raw\n"  # default PATH is .
    assert lines(find(m.path("a", "y.txt"))) == ["/a/y.txt"]  # a file
    assert lines(find(m.path("a", "y.txt"), "--state", "archived")) == []
    assert "/a\n" in find(m.mnt, "--type", "any") and "/a/b\n" in find(m.mnt, "--type", "any")
    # NUL-separated absolute paths feed xargs -0
    out = m.cli("find", "-0", "-a", m.mnt, "--name", "*.raw", "--state", "online").stdout
    assert out == m.path("a", "b", "z.raw") + "\0"
    assert find("--count", m.mnt, "--name", "*.raw") == "3\n"
    rows = json.loads(find("--json", m.mnt, "--state", "archived", "--state", "dual"))
    by = {r["path"]: r for r in rows}
    assert set(by) == {"/a/x.raw", "/c/w.raw"}
    assert by["/a/x.raw"]["archive_tier"] == "vault" and by["/a/x.raw"]["tier"] is None
    assert by["/a/x.raw"]["size"] == 2_000_000 and len(by["/a/x.raw"]["checksum"]) == 64
    assert by["/c/w.raw"]["state"] == "dual" and by["/c/w.raw"]["tier"] == "disk"
    # renames and deletes show at once (the catalog, not a stale index)
    os.rename(m.path("a", "b"), m.path("c", "bb"))
    os.unlink(m.path("top.txt"))
    assert lines(find(m.mnt, "--name", "*.raw", "--state", "online")) == ["/c/bb/z.raw"]
    assert "/top.txt" not in find(m.mnt)


def test_find_prints_every_name_and_odd_names(mount):
    m = mount
    put(m, "d/one", 10)
    os.link(m.path("d", "one"), m.path("two"))
    odd = os.fsencode(m.path("d")) + b"/caf\xe9 \xff\nnew line"
    with open(odd, "wb") as f:
        f.write(b"x")
    out = subprocess.run([sys.executable, "-m", "tierfs.cli", "find", "-0", m.mnt], capture_output=True,
                         env=m.env).stdout
    assert sorted(out.split(b"\0")[:-1]) == sorted([b"/d/one", b"/two", b"/d/caf\xe9 \xff\nnew line"])
    assert json.loads(m.cli("find", "--json", m.mnt, "--name", "caf*").stdout)[0]["size"] == 1


def test_du_by_state_tier_owner(tree):
    m = tree
    res = json.loads(m.cli("du", "--json", m.mnt).stdout)
    assert res["files"] == 5 and res["bytes"] == 5_510_001
    assert res["by_state"] == {"archived": {"files": 1, "bytes": 2_000_000}, "dual": {"files": 1, "bytes": 500_000},
                               "online": {"files": 3, "bytes": 3_010_001}}
    assert res["by_tier"] == {"disk": {"role": "online", "files": 4, "bytes": 3_510_001},
                              "vault": {"role": "archive", "files": 2, "bytes": 2_500_000}}
    sub = json.loads(m.cli("du", "--json", "--by", "owner", m.path("a")).stdout)
    assert sub["files"] == 3 and sub["bytes"] == 5_010_000 and set(sub["by_owner"]) == {"root"}
    assert "by_state" not in sub
    assert json.loads(m.cli("du", "--json", "--by", "owner", m.mnt).stdout)["by_owner"]["nobody"] == \
        {"uid": 65534, "files": 1, "bytes": 1}
    text = m.cli("du", "-b", m.path("a", "b")).stdout
    assert "online" in text and "3000000" in text and text.splitlines()[-1].split()[:3] == ["total", "1", "3000000"]
    assert m.cli("du", "--by", "tier", m.path("c")).stdout.count("500.0kB") == 3  # disk, vault, total


def test_status_shows_tiers_states_jobs_and_policies(tree):
    m = tree
    # An archive of a file open for writing waits in the queue: a job to show.
    with open(m.path("a", "y.txt"), "r+b"):
        os.setxattr(m.path("a", "y.txt"), "user.tierfs.request", b"archive")
        s = json.loads(m.cli("status", "--json", m.mnt).stdout)
        text = m.cli("status", m.path("a")).stdout  # any path inside the mount
    assert len(s) == 1
    s = s[0]
    assert s["catalog"].split(":")[0] in ("sqlite", "mongodb")
    assert s["mounts"][0]["mountpoint"] == m.mnt and s["mounts"][0]["pid"] == m.pid
    assert "mnt.toml" in s["mounts"][0]["config"] and s["mounts"][0]["session"]
    assert [x["mountpoint"] for x in s["sessions"]] == [m.mnt]
    assert s["tiers"]["disk"]["role"] == "online" and s["tiers"]["vault"]["role"] == "archive"
    assert s["tiers"]["disk"]["default"] and s["tiers"]["vault"]["default"]
    assert s["tiers"]["vault"]["files"] == 2 and s["tiers"]["vault"]["bytes"] == 2_500_000
    assert s["tiers"]["disk"]["files"] == 4 and s["tiers"]["disk"]["bytes"] == 3_510_001
    assert s["tiers"]["disk"]["usage"]["total"] > s["tiers"]["disk"]["usage"]["free"] > 0
    assert s["states"] == {"archived": {"files": 1, "bytes": 2_000_000}, "dual": {"files": 1, "bytes": 500_000},
                           "online": {"files": 3, "bytes": 3_010_001}}
    assert s["jobs"]["archive"]["pending"] + s["jobs"]["archive"]["running"] == 1
    assert s["policies"] == {"configured": False, "rules": []}
    assert "no policies configured" in text and f"mount     {m.mnt}" in text
    assert [ln.split()[:3] for ln in text.splitlines() if ln.startswith("vault")] == [["vault", "vault", "archive*"]]
    # never a problem: healthy, nothing to recall (test_job_waits: a tier away and back)
    assert {n: (t["health"]["state"], t["health"]["last_error"]) for n, t in s["tiers"].items()} == \
        {"disk": ("ok", ""), "vault": ("ok", "")}
    assert [ln.split()[-1] for ln in text.splitlines() if ln.startswith(("disk ", "vault "))] == ["ok", "ok"]
    assert any(ln.split()[:2] == ["archive", "1"] or ln.split()[:3] == ["archive", "0", "1"]
               for ln in text.splitlines())


def test_queue_names_the_host_and_session_running_each_job(make_mount, tmp_path):
    """A running job's claim: the session of the mount running it and that session's host; a
    waiting job has none."""
    for d in ("disk", "vault"):
        os.makedirs(tmp_path / d)
    # every archive write takes 4 s: a job stays running long enough to be seen
    m = make_mount(config=f'[tiers.disk]\nkind = "disk"\npath = "{tmp_path}/disk"\n[tiers.vault]\nkind = "vault"\n'
                          f'path = "{tmp_path}/vault"\narchive_delay = "4s"\n')
    put(m, "slow", 1000)
    with open(m.path("busy"), "wb") as busy:   # open for writing: its archive waits, unclaimed
        os.setxattr(m.path("busy"), "user.tierfs.request", b"archive")
        os.setxattr(m.path("slow"), "user.tierfs.request", b"archive")
        rows = wait_for(lambda: (lambda r: r if any(j["state"] == "running" for j in r) else None)(
            json.loads(m.cli("queue", "--json", m.mnt).stdout)), 10, what="a running job")
        text = m.cli("queue", m.mnt).stdout
        busy.write(b"x")
    by_path = {r["path"]: r for r in rows}
    session = m.stats()["session"]
    assert (by_path["/slow"]["state"], by_path["/slow"]["session"], by_path["/slow"]["host"]) == \
        ("running", session, socket.gethostname()), rows
    assert by_path["/busy"]["state"] != "running" and by_path["/busy"]["session"] is None \
        and by_path["/busy"]["host"] is None, rows
    line = next(x for x in text.splitlines() if x.endswith(" /slow"))
    assert f" {socket.gethostname()}/{session} " in line and "RUN BY" in text, text
    assert next(x for x in text.splitlines() if "/busy" in x).split()[5] == "-", text


def test_status_with_watermarks_and_a_policy(make_mount):
    m = make_mount(config="""
        [tiers.disk]
        kind = "disk"
        path = "{home}/disk"
        high_watermark = 0.99
        low_watermark = 0.98

        [tiers.vault]
        kind = "vault"
        path = "{home}/vault"

        [[policy]]
        name = "cold"
        action = "archive"
        to = "vault"
        inactive_for = "30d"
        interval = "1d"
    """.replace("{home}", "HOME"), start=False)
    m.extra_config = m.extra_config.replace("HOME", m.home)
    for d in ("disk", "vault"):
        os.makedirs(os.path.join(m.home, d), exist_ok=True)
    m.start()
    s = json.loads(m.cli("status", "--json", m.mnt).stdout)[0]
    assert s["tiers"]["disk"]["high_watermark"] == 0.99 and s["tiers"]["disk"]["low_watermark"] == 0.98
    (rule,) = s["policies"]["rules"]
    assert rule["name"] == "cold" and rule["action"] == "archive" and rule["interval_s"] == 86400
    text = m.cli("status", m.mnt).stdout
    assert "policy    cold: archive (every 1d)" in text and "99% / 98%" in text


def test_config_comes_from_the_daemon_not_the_environment(mount, tmp_path):
    m = mount
    put(m, "f", 5)
    # The CLI's own environment points elsewhere: an empty default config and home.
    env = {"TIERFS_HOME": str(tmp_path / "elsewhere"), "TIERFS_CONFIG": str(tmp_path / "nope.toml")}
    r = m.cli("find", m.mnt, env=env)
    assert r.stdout == "/f\n"
    # An explicit --config naming another catalog is refused rather than answered from.
    other = tmp_path / "other.toml"
    other.write_text(f'catalog = "sqlite:///{tmp_path}/other.db"\n')
    sqlite3.connect(tmp_path / "other.db").close()
    from tierfs.catalog import open_catalog
    c = open_catalog(f"sqlite:///{tmp_path}/other.db")
    c.init()
    c.close()
    r = m.cli("find", m.mnt, "--config", str(other), check=False)
    assert r.returncode == 6 and "not the one this mount uses" in r.stderr and r.stderr.count("\n") == 1
    r = m.cli("status", m.mnt, "--config", str(tmp_path / "missing.toml"), check=False)
    assert r.returncode == 6 and "does not exist" in r.stderr


def test_errors_have_one_line_and_distinct_codes(make_mount, tmp_path):
    m = make_mount(env={"TIERFS_NO_AUTO_UNMOUNT": "1"})  # a killed daemon leaves a stale mount behind
    for cmd in (["find"], ["du"], ["status"]):
        r = m.cli(*cmd, str(tmp_path), check=False)
        assert r.returncode == 3 and "not inside a tierfs mount" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    for cmd in (["find"], ["du"]):
        r = m.cli(*cmd, m.path("missing"), check=False)
        assert r.returncode == 4 and "No such file" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = m.cli("find", m.mnt, "--size", "+lots", check=False)
    assert r.returncode == 2 and "--size" in r.stderr
    r = m.cli("find", m.mnt, "--tier", "tape", check=False)
    assert r.returncode == 2 and "no tier named 'tape'" in r.stderr
    put(m, "f", 1)
    r = m.cli("du", m.path("f"), check=False)
    assert r.returncode == 1 and "not a directory" in r.stderr
    m.kill()
    # auto_unmount removes the dead mount asynchronously: until then it is stale ("not running")
    mounts.wait_mounted(m.mnt, 5, mounted=False)
    for cmd in (["find"], ["du"], ["status"]):
        r = m.cli(*cmd, m.mnt, check=False)
        assert r.returncode == 3 and ("not running" in r.stderr or "not inside a tierfs mount" in r.stderr) \
            and r.stderr.count("\n") == 1, r.stderr


def test_status_with_config_reads_only_that_catalog(make_mount, tmp_path):
    """`status --config FILE` answers about FILE's catalog alone, whatever
    other mounts run or lie dead on the host (it used to list every mount,
    and a dead one made it exit 3)."""
    other = make_mount(name="other", catalog_url=f"sqlite:///{tmp_path}/other.db",
                       env={"TIERFS_NO_AUTO_UNMOUNT": "1"})
    mine = make_mount(name="mine", catalog_url=f"sqlite:///{tmp_path}/mine.db")
    put(mine, "f", 10)
    mine.stop()
    for _ in ("running", "dead"):
        s = json.loads(mine.cli("status", "--json", "--config", mine.config_path).stdout)
        assert [c["catalog"] for c in s] == [f"sqlite:///{tmp_path}/mine.db"], s
        other.kill()   # second round: a stale mount on the host


# ---- a big catalog built by bulk inserts ----------------------------------------------------
STATES = ["online"] * 60 + ["dual"] * 12 + ["archived"] * 25 + ["lost"] * 3


def build_catalog(path: str, entries: int, per_dir: int = 1000, seed: int = 1) -> dict:
    """A catalog of `entries` inodes (root, directories, files) written with bulk
    INSERTs; returns {state: files}. Files have no tier objects: only for queries."""
    from tierfs.catalog import open_catalog
    cat = open_catalog(f"sqlite:///{path}")
    cat.init()
    cat.close()
    rnd = random.Random(seed)
    ndirs = max(1, entries // (per_dir + 1))
    nfiles = entries - 1 - ndirs
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    cols = ("ino, mode, uid, gid, nlink, size, atime_ns, mtime_ns, ctime_ns, crtime_ns, rdev, target, state, tier, "
            "location, archive_tier, archive_location, checksum, data_version, state_ns, state_cause")
    ins = f"INSERT INTO inodes ({cols}) VALUES ({','.join('?' * 21)})"
    now = time.time_ns()
    counts: dict = {}
    inodes, dents = [], []
    for d in range(ndirs):
        ino = 2 + d
        inodes.append((ino, 0o40755, 0, 0, 2, 0, now, now, now, now, 0, None, "online", None, None, None, None,
                       None, 0, now, "bulk"))
        dents.append((1, b"dir%05d" % d, ino))
    ino = 2 + ndirs
    for k in range(nfiles):
        st = rnd.choice(STATES)
        counts[st] = counts.get(st, 0) + 1
        t = now - rnd.randrange(730) * DAY_NS
        online = st in ("online", "dual")
        inodes.append((ino, 0o100644, 1000 + rnd.randrange(4), 1000, 1, rnd.randrange(1 << 24), t, t, t, t, 0,
                       None, st, "disk" if online else None, f"k{ino}" if online else None,
                       None if st == "online" else "vault", None if st == "online" else f"a{ino}", None, 0, t,
                       "bulk"))
        dents.append((2 + k % ndirs, b"f%07d%s" % (ino, rnd.choice((b".raw", b".txt", b".h5"))), ino))
        ino += 1
        if len(inodes) >= 50000:
            db.executemany(ins, inodes)
            db.executemany("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", dents)
            inodes, dents = [], []
    db.executemany(ins, inodes)
    db.executemany("INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", dents)
    db.execute("UPDATE inodes SET nlink = 2 + ? WHERE ino = 1", (ndirs,))
    db.execute("COMMIT")
    db.close()
    return counts


def timed_find(m, *args) -> tuple[float, str]:
    t0 = time.monotonic()
    r = m.cli("find", m.mnt, *args)
    return time.monotonic() - t0, r.stdout


def test_find_on_a_100k_entry_catalog(make_mount, tmp_path):
    db = str(tmp_path / "catalog.db")
    counts = build_catalog(db, 100_000)
    m = make_mount(catalog_url=f"sqlite:///{db}")
    secs, out = timed_find(m, "--state", "archived")
    paths = out.splitlines()
    assert len(paths) == counts["archived"] and len(set(paths)) == len(paths)
    assert all(p.startswith("/dir") and p.count("/") == 2 for p in paths)
    assert timed_find(m, "--count", "--state", "lost")[1] == f"{counts['lost']}\n"
    assert timed_find(m, "--count", "--state", "dual", "--tier", "vault")[1] == f"{counts['dual']}\n"
    d = json.loads(m.cli("du", "--json", m.mnt).stdout)
    assert d["files"] == sum(counts.values()) and d["by_state"]["archived"]["files"] == counts["archived"]
    # a random archived path really is archived, as the mount sees it
    p = random.Random(2).choice(paths)
    assert os.getxattr(m.mnt + p, "user.tierfs.state") == b"archived"
    sys.stderr.write(f"\nfind --state archived on 100k entries: {len(paths)} paths in {secs:.2f}s\n")


def bench(entries: int) -> None:
    """Build a catalog of `entries`, mount it, time `tierfs find --state archived` (3 runs)."""
    import tempfile
    base = tempfile.mkdtemp(prefix="tierfs-find-bench-")
    db = os.path.join(base, "catalog.db")
    t0 = time.monotonic()
    counts = build_catalog(db, entries)
    print(f"built {entries} entries in {time.monotonic() - t0:.1f}s: {counts}")
    m = Mount(base, f"sqlite:///{db}")
    try:
        m.start()
        for args in (["--state", "archived"], ["--state", "archived"], ["--state", "archived"],
                     ["--state", "lost"], ["--state", "archived", "--name", "*.raw"],
                     ["--count", "--state", "archived"], ["--state", "online"]):
            secs, out = timed_find(m, *args)
            n = out.strip() if "--count" in args else len(out.splitlines())
            print(f"tierfs find {' '.join(args)}: {n} results in {secs:.2f}s (whole command, Python start included)")
        for args in (["du", m.mnt], ["status", m.mnt]):
            t0 = time.monotonic()
            m.cli(*args)
            print(f"tierfs {args[0]}: {time.monotonic() - t0:.2f}s")
    finally:
        m.cleanup()
        import shutil
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    bench(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
