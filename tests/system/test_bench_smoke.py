"""The benchmark command runs end to end on tiny sizes and produces its
table and JSON (no timing is asserted: benchmarks are not tests)."""

import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.mount


def test_bench_runs_on_tiny_sizes(tmp_path):
    out = tmp_path / "bench.json"
    # every case but "contention" (its own test below: it starts a replica set and mounts of its own)
    cases = "io,meta,ops,dbench,catalog,roundtrips,access,archive"
    r = subprocess.run([os.path.join(ROOT, "bench", "run"), "--tiny", "--json", str(out), "--cases", cases,
                        "--workdir", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "| case | native | tierfs |" in r.stdout, r.stdout
    assert "| catalog scale | SQLite | MongoDB |" in r.stdout
    assert "Targets:" in r.stdout
    res = json.loads(out.read_text())
    assert not [e for e in res["meta"]["errors"] if "skipped" not in e], res["meta"]["errors"]
    for case in ("io", "meta"):
        for system in ("native", "tierfs", "pyfuse3-floor"):
            runs = res["cases"][case][system]["runs"]
            assert runs and all(len(v) == 1 and v[0] > 0 for k, v in runs.items()
                                if k != "background_after_write"), (case, system, runs)
    assert res["cases"]["meta"]["tierfs-noxattr"]["runs"]["ls_warm"]
    sql = res["cases"]["catalog"]["sqlite"]
    assert sql["candidates"] == sql["candidates_expected"] == 20, sql
    assert sql["rows_read"] == [20]
    mongo = res["cases"]["catalog"]["mongo"]
    assert isinstance(mongo, str) and mongo.startswith("n/a") or mongo["candidates"] == 20, mongo
    assert res["cases"]["access"]["atime_writes"] >= 1
    assert res["cases"]["archive"]["vault_reads"] == [1], res["cases"]["archive"]
    # issue 17: tierfs with and without passthrough in one run, the daemon's read/write requests counted
    assert res["cases"]["io"]["tierfs-nopt"]["passthrough"]["active"] is False
    counts = res["cases"]["io"]["tierfs-nopt"]["daemon_requests"]["read_cold"]
    assert counts["read"] and counts["read"][0] > 0, counts
    assert "error" not in res["cases"]["restored_read"]["tierfs"], res["cases"]["restored_read"]
    assert "Issue 17" in r.stdout
    assert {t["status"] for t in res["targets"]} <= {"met", "missed", "not run"}
    assert res["meta"]["load_start"] and res["meta"]["machine"]["nproc"]
    # every mount the bench made is gone
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path) not in f.read()


def test_bench_contention_case_on_tiny_sizes(tmp_path):
    """Issue 20: the create-contention case runs every level (catalog.create, the engine, FUSE mounts) with
    1 and N workers on its own 3-member replica set, reports them, and leaves no mongod or mount behind."""
    from tierfs.mounts import pid_alive
    out = tmp_path / "bench.json"
    r = subprocess.run([os.path.join(ROOT, "bench", "run"), "--tiny", "--json", str(out), "--cases", "contention",
                        "--workdir", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    res = json.loads(out.read_text())
    assert not res["meta"]["errors"], res["meta"]["errors"]
    ct = res["cases"]["contention"]
    n = str(ct["params"]["mounts"])
    for level, variants in (("catalog", ("ranges", "single", "one dir")), ("engine", ("ranges", "single")),
                            ("fuse", ("ranges", "one dir"))):
        for v in variants:
            runs = ct["levels"][level][v]
            assert set(runs) == {"1", n}, (level, v, runs)
            assert all(x["files"] > 0 and 0 < x["cpu_util"] <= 1 for xs in runs.values() for x in xs), (level, v)
    assert "| catalog.create: ranges |" in r.stdout and "| through FUSE: one dir |" in r.stdout
    assert any(t["target"].startswith("create throughput of 4 mounts") and "1 ms from the primary" in t["target"]
               and t["figures"].startswith("run with 2")
               for t in res["targets"])
    assert not [p for p in ct["params"]["mongod_pids"] if pid_alive(p)]
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path) not in f.read()
