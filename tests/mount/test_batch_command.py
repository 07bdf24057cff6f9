"""Restore batches of a `command` tier (restore_batch_command) through a real
mount: `tierfs restore -r` of many files runs the copytool once per
batch_max_files, the list is sorted by key with its four columns, a results
file fails one object without failing the batch, exit 75 keeps the whole
batch queued with its reason, and batch_wait gathers requests that arrive
over time. The copytool is a script written here: it logs each run and copies
objects from a directory standing for the tape."""

import hashlib
import json
import math
import os
import sys
import textwrap
import time

import pytest

from tests.conftest import file_info as info, put_file as put, wait_for

pytestmark = pytest.mark.mount

COPYTOOL = textwrap.dedent('''
    """Test copytool: copytool.py restore|archive LIST RESULTS TAPE RUNS CONTROL."""
    import json, os, shutil, sys, time
    mode, listing, results, tape, runs, control = sys.argv[1:7]
    lines = open(listing).read().splitlines()
    ctl = json.load(open(control)) if os.path.exists(control) else {}
    with open(runs, "a") as f:
        f.write(json.dumps({"mode": mode, "t": time.time(), "lines": lines}) + "\\n")
    if ctl.get("exit") == 75:
        print(ctl.get("say", "tape not in the library"), file=sys.stderr)
        sys.exit(75)
    out = []
    for line in lines:
        key, path, size, sha = line.split("\\t")
        if key in ctl.get("fail", ()) or int(size) in ctl.get("fail_size", ()):
            out.append(f"{key}\\tfailed\\tbad block on tape T0001")
        elif mode == "restore" and key in ctl.get("corrupt", ()):
            open(path, "wb").write(b"x" * int(size))   # right size, wrong bytes
        elif mode == "restore":
            shutil.copyfile(os.path.join(tape, key), path)
        else:
            shutil.copyfile(path, os.path.join(tape, key))
    with open(results, "w") as f:
        f.write("".join(x + "\\n" for x in out))
''')


def tape_mount(make_mount, tmp_path, *, files=5, wait=1.0, retry=1, top="", archive=False, catalog_url=None):
    """A mount with a disk tier and a `command` tier `tape` whose restores (and archives) are batched."""
    tape, home = tmp_path / "tape", tmp_path / "home"
    tape.mkdir()
    (home / "disk").mkdir(parents=True)
    tool = tmp_path / "copytool.py"
    tool.write_text(COPYTOOL)
    runs, control = tmp_path / "runs.jsonl", tmp_path / "control.json"
    tool_args = f"{{list}} {{results}} {tape} {runs} {control}"
    batch_archive = f'archive_batch_command = "{sys.executable} {tool} archive {tool_args}"' if archive else ""
    m = make_mount(config=f"""
        restore_mode = "error"
        job_retry_delay = {retry}
        {top}
        [tiers.disk]
        kind = "disk"
        path = "{home}/disk"
        [tiers.tape]
        kind = "command"
        archive_command = "cp {{path}} {tape}/{{key}}"
        restore_command = "echo per-object restore used >&2; exit 1"
        restore_batch_command = "{sys.executable} {tool} restore {tool_args}"
        {batch_archive}
        batch_max_files = {files}
        batch_wait = {wait}
    """, catalog_url=catalog_url)
    m.runs = lambda mode="restore": [r for r in map(json.loads, runs.read_text().splitlines() if runs.exists() else [])
                                     if r["mode"] == mode]
    m.control = lambda **c: control.write_text(json.dumps(c))
    return m


def archived_set(m, n, prefix="d/f", size=20_000):
    """n files archived to the tape: {relative path: bytes}."""
    datas = {f"{prefix}{i:03d}.bin": put(m, f"{prefix}{i:03d}.bin", size + i) for i in range(n)}
    m.cli("archive", "--wait", "--timeout", "120", "--to", "tape", "-r", m.path(os.path.dirname(prefix)))
    assert all(m.state(p) == "archived" for p in datas)
    return datas


def test_restore_r_runs_one_command_per_batch(make_mount, tmp_path):
    m = tape_mount(make_mount, tmp_path, files=5, wait=3)
    datas = archived_set(m, 12)
    keys = {info(m, p)["archive_location"]: p for p in datas}
    t0 = time.monotonic()
    m.cli("restore", "-r", "--wait", "--timeout", "120", m.path("d"))
    took = time.monotonic() - t0
    for p, d in datas.items():
        assert m.state(p) == "dual"
        assert hashlib.sha256(open(m.path(p), "rb").read()).digest() == hashlib.sha256(d).digest()
    runs = m.runs()
    assert 1 <= len(runs) <= math.ceil(12 / 5), runs
    listed = [line.split("\t") for r in runs for line in r["lines"]]
    assert sorted(k for k, *_ in listed) == sorted(keys)   # each object once
    for r in runs:
        ks = [line.split("\t")[0] for line in r["lines"]]
        assert ks == sorted(ks) and len(ks) <= 5
    staged = os.path.join(m.home, "state", "command-tape", "restored")
    for key, path, size, sha in listed:
        assert os.path.dirname(path) == staged
        assert int(size) == len(datas[keys[key]]) and sha == hashlib.sha256(datas[keys[key]]).hexdigest()
    assert os.listdir(staged) == []   # every restored staging file was consumed
    assert "per-object restore used" not in m.log()
    print(f"restore -r of 12 files: {len(runs)} copytool runs, {took:.1f}s")


def test_results_file_fails_one_object_only(make_mount, tmp_path):
    m = tape_mount(make_mount, tmp_path, files=10, wait=1, top="job_max_attempts = 2")
    datas = archived_set(m, 4)
    bad = "d/f002.bin"
    bad_key = info(m, bad)["archive_location"]
    m.control(fail=[bad_key])
    r = m.cli("restore", "-r", "--wait", "--timeout", "120", m.path("d"), check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    for p, d in datas.items():
        if p != bad:
            assert m.state(p) == "dual" and open(m.path(p), "rb").read() == d
    assert m.state(bad) in ("archived", "restoring")   # (a failed restore job leaves it restoring, as today)
    job = [j for j in info(m, bad)["jobs"] if j["kind"] == "restore"][-1]
    assert job["state"] == "failed" and job["attempts"] == 2
    assert "bad block on tape T0001" in job["last_error"]
    # the failed object was asked for again in a later batch (an attempt each), alone
    runs = m.runs()
    assert [line.split("\t")[0] for line in runs[-1]["lines"]] == [bad_key]
    assert sum(bad_key in line for r in runs for line in r["lines"]) == 2
    # once the tape reads, a new restore brings it back
    m.control()
    m.cli("restore", "--wait", "--timeout", "60", m.path(bad))
    assert open(m.path(bad), "rb").read() == datas[bad]


def test_restored_bytes_that_differ_from_the_manifest_fail_the_job_not_the_file(make_mount, tmp_path):
    """A copytool that writes the wrong bytes: the object fails its check
    against the manifest (sha256), its job fails with that reason, and the
    file stays restorable (the copy's checksum check would mark it lost)."""
    m = tape_mount(make_mount, tmp_path, files=10, wait=1, top="job_max_attempts = 1")
    datas = archived_set(m, 3)
    bad = "d/f001.bin"
    m.control(corrupt=[info(m, bad)["archive_location"]])
    r = m.cli("restore", "-r", "--wait", "--timeout", "60", m.path("d"), check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    job = [j for j in info(m, bad)["jobs"] if j["kind"] == "restore"][-1]
    assert job["state"] == "failed" and "the manifest says" in job["last_error"]
    assert m.state(bad) in ("archived", "restoring")
    assert all(m.state(p) == "dual" for p in datas if p != bad)
    m.control()
    m.cli("restore", "--wait", "--timeout", "60", m.path(bad))
    assert open(m.path(bad), "rb").read() == datas[bad]


def test_pending_batch_stays_queued_with_its_reason(make_mount, tmp_path):
    m = tape_mount(make_mount, tmp_path, files=10, wait=1)
    datas = archived_set(m, 3)
    m.control(exit=75, say="please load tape T0007")
    m.cli("restore", "-r", m.path("d"))

    def all_waiting():
        q = json.loads(m.cli("queue", "--json", m.mnt).stdout)
        return len(q) == 3 and all("please load tape T0007" in j["last_error"] for j in q) and q
    q = wait_for(all_waiting, timeout=30, what="the batch's reason on every queued job")
    assert {j["kind"] for j in q} == {"restore"}
    assert all(m.state(p) in ("restoring", "archived") for p in datas)
    out = m.cli("queue", m.mnt).stdout
    assert "please load tape T0007" in out
    # the requests outlive a restart
    m.stop()
    m.start()
    m.control()
    wait_for(lambda: all(m.state(p) == "dual" for p in datas), timeout=60, what="restores once the tape is in")
    for p, d in datas.items():
        assert open(m.path(p), "rb").read() == d
    runs = m.runs()
    assert all(len(r["lines"]) == 3 for r in runs), runs   # every run carried the whole batch
    assert len(runs) >= 2


def test_batch_wait_gathers_requests_over_time(make_mount, tmp_path):
    # job_retry_delay = 30: the jobs come back when their batch is due (the tier's hint), not 30 s later
    m = tape_mount(make_mount, tmp_path, files=100, wait=2.5, retry=30)
    datas = archived_set(m, 4)
    first = time.time()
    for p in datas:   # restore_mode = "error": an open queues the restore and fails EAGAIN
        with pytest.raises(BlockingIOError):
            open(m.path(p), "rb")
        time.sleep(0.3)
    wait_for(lambda: all(m.state(p) == "dual" for p in datas), timeout=2.5 + 10, what="restores")
    runs = m.runs()
    assert len(runs) == 1 and len(runs[0]["lines"]) == 4, runs
    assert runs[0]["t"] - first >= 2.5 - 0.2   # it waited for batch_wait from the first request
    for p, d in datas.items():
        assert open(m.path(p), "rb").read() == d


def test_archive_r_runs_one_command_per_batch(make_mount, tmp_path, catalog_url):
    """On each catalog backend: the runner's claim of archive jobs beyond `workers`."""
    m = tape_mount(make_mount, tmp_path, files=5, wait=2, archive=True, top="job_max_attempts = 2",
                   catalog_url=catalog_url)
    datas = {f"a/f{i:03d}.bin": put(m, f"a/f{i:03d}.bin", 20_000 + i) for i in range(12)}
    bad = "a/f004.bin"
    m.control(fail_size=[len(datas[bad])])
    r = m.cli("archive", "-r", "--wait", "--timeout", "120", "--to", "tape", m.path("a"), check=False)
    assert r.returncode == 1, r.stdout + r.stderr   # the one the copytool failed
    runs = m.runs("archive")
    # 12 files in batches of 5 (the failed one's second attempt joins a later batch or runs alone)
    assert len(runs) <= math.ceil(12 / 5) + 1 and sum(len(r["lines"]) for r in runs) == 12 + 1, runs
    for r in runs:
        ks = [line.split("\t")[0] for line in r["lines"]]
        assert ks == sorted(ks) and len(ks) <= 5
    staged = os.path.join(m.home, "state", "command-tape")
    for p, d in datas.items():
        if p == bad:
            continue
        i = info(m, p)
        assert m.state(p) == "archived" and i["archive_tier"] == "tape"
        assert open(tmp_path / "tape" / i["archive_location"], "rb").read() == d   # on "tape", byte for byte
        line = next(x for r in runs for x in r["lines"] if x.startswith(i["archive_location"]))
        assert line.split("\t")[1:] == [os.path.join(staged, "out", i["archive_location"]), str(len(d)),
                                        hashlib.sha256(d).hexdigest()]
    job = [j for j in info(m, bad)["jobs"] if j["kind"] == "archive"][-1]
    assert m.state(bad) == "online" and job["state"] == "failed" and job["attempts"] == 2
    assert "bad block on tape T0001" in job["last_error"]
    # nothing left behind: staged bytes, requests, or a manifest entry of the failed copies
    assert os.listdir(os.path.join(staged, "out")) == []
    assert os.listdir(os.path.join(staged, "batch-archive", "requests")) == []
    assert sorted(os.listdir(os.path.join(staged, "manifest"))) == sorted(
        info(m, p)["archive_location"] for p in datas if p != bad)
    # and they come back through restore batches
    m.cli("restore", "-r", "--wait", "--timeout", "120", m.path("a"))
    for p, d in datas.items():
        assert open(m.path(p), "rb").read() == d


def test_pending_archive_batch_waits_and_copies_again(make_mount, tmp_path):
    m = tape_mount(make_mount, tmp_path, files=10, wait=1, archive=True)
    datas = {f"a/f{i}.bin": put(m, f"a/f{i}.bin", 30_000 + i) for i in range(3)}
    m.control(exit=75, say="no scratch tape in the library")
    m.cli("archive", "-r", "--to", "tape", m.path("a"))

    def all_waiting():
        q = json.loads(m.cli("queue", "--json", m.mnt).stdout)
        return len(q) == 3 and all("no scratch tape in the library" in j["last_error"] for j in q) and q
    wait_for(all_waiting, timeout=30, what="the batch's reason on every queued archive")
    assert all(m.state(p) in ("online", "archiving") for p in datas)
    assert os.listdir(tmp_path / "tape") == []
    m.control()
    wait_for(lambda: all(m.state(p) == "archived" for p in datas), timeout=60, what="archives once a tape is in")
    assert sorted(os.listdir(tmp_path / "tape")) == sorted(info(m, p)["archive_location"] for p in datas)
    assert os.listdir(os.path.join(m.home, "state", "command-tape", "out")) == []
    for p, d in datas.items():
        assert open(tmp_path / "tape" / info(m, p)["archive_location"], "rb").read() == d


def archives_waiting(make_mount, tmp_path):
    """A mount whose three archive jobs wait inside the tier for a batch due in 60 s:
    (mount, {path: bytes}, the tier's staging directory)."""
    m = tape_mount(make_mount, tmp_path, files=10, wait=60, archive=True)
    datas = {f"a/f{i}.bin": put(m, f"a/f{i}.bin", 40_000 + i) for i in range(3)}
    m.cli("archive", "-r", "--to", "tape", m.path("a"))
    staged = os.path.join(m.home, "state", "command-tape")
    wait_for(lambda: len(os.listdir(os.path.join(staged, "batch-archive", "requests"))) == 3, timeout=30,
             what="three puts waiting for their batch")
    return m, datas, staged


def restart_and_archive(m, datas, tmp_path):
    """Mount again with batch_wait = 1: the jobs copy again and archive in one batch, nothing else on tape."""
    m.extra_config = m.extra_config.replace("batch_wait = 60", "batch_wait = 1")
    m.start()
    for p, d in datas.items():   # readable at once (from the online copy)
        assert open(m.path(p), "rb").read() == d
    wait_for(lambda: all(m.state(p) == "archived" for p in datas), timeout=60, what="archives at the next mount")
    assert sorted(os.listdir(tmp_path / "tape")) == sorted(info(m, p)["archive_location"] for p in datas)
    assert len(m.runs("archive")) == 1


def test_crash_while_archives_wait_for_their_batch(make_mount, tmp_path):
    """SIGKILL while put()s wait for a batch: after the restart the files are
    readable, their jobs copy again, and no staged bytes, request or tape copy
    of the dead run is left."""
    m, datas, staged = archives_waiting(make_mount, tmp_path)
    m.kill()
    restart_and_archive(m, datas, tmp_path)
    assert os.listdir(os.path.join(staged, "out")) == []
    assert os.listdir(os.path.join(staged, "batch-archive", "requests")) == []


def test_unmount_does_not_wait_for_an_archive_batch_to_fill(make_mount, tmp_path):
    """Archives waiting for a batch that has not started leave at unmount (was:
    the unmount waited the rest of batch_wait); the next mount archives them."""
    m, datas, staged = archives_waiting(make_mount, tmp_path)
    t0 = time.monotonic()
    m.stop()
    assert time.monotonic() - t0 < 20
    assert m.runs("archive") == [] and os.listdir(os.path.join(staged, "out")) == []
    restart_and_archive(m, datas, tmp_path)
