"""`tierfs config show|check|example` through the real CLI: the effective
configuration of a real mount (its runtime file's config and -o), a file's
every error, and the example configs installed with the package, checked and
mounted (single-host on its own; lab against mongod and moto's S3).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import uuid

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.mount

TOP = 'restore_mode = "error"\nworkers = 3\n'


def tierfs(*args, env: dict, cwd: str = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    """The CLI of this tree (PYTHONPATH: run from inside a mount, `-m` would import the installed one)."""
    r = subprocess.run([sys.executable, "-m", "tierfs.cli", *args], capture_output=True, text=True, timeout=120,
                       env=dict(env, PYTHONPATH=ROOT), cwd=cwd)
    if check and r.returncode != 0:
        raise AssertionError(f"tierfs {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def private_env(m, tmp_path) -> dict:
    """The caller's environment pointing elsewhere: a show must follow the mount, not $TIERFS_HOME."""
    return dict(m.env, TIERFS_HOME=str(tmp_path / "elsewhere"))


def test_show_of_a_mount_says_where_each_value_came_from(make_mount, tmp_path):
    run = str(tmp_path / "run")
    m = make_mount(config=TOP, options=("block_timeout=7",), env={"TIERFS_RUNTIME_DIR": run})
    env = private_env(m, tmp_path)
    # inside the mount, no argument: that mount
    out = json.loads(tierfs("config", "show", "--json", env=env, cwd=m.mnt).stdout)
    assert (out["mount"], out["file"], out["home"]) == (m.mnt, m.config_path, m.home), out
    s, src = out["settings"], out["sources"]
    assert (s["restore_mode"], src["restore_mode"]) == ("error", f"file {m.config_path}")
    assert (s["block_timeout"], src["block_timeout"]) == (7.0, "-o") and out["overrides"] == {"block_timeout": 7}
    assert (s["job_max_attempts"], src["job_max_attempts"]) == (5, "default")          # filled in
    assert (s["default_tier"], src["default_tier"]) == ("disk", "default: the first online tier")
    assert s["tiers"]["vault"]["path"] == f"{m.home}/vault" and src["tiers.vault.path"] == f"file {m.config_path}"
    assert src["tiers.vault.stub_bytes"] == "default" and s["tiers"]["vault"]["stub_bytes"] == 0
    # the TOML form (MOUNT given, from outside) is a config: the same values, the sources as comments
    text = tierfs("config", "show", m.mnt, env=env).stdout
    assert "block_timeout = 7.0  # -o\n" in text and f'restore_mode = "error"  # file {m.config_path}\n' in text
    assert "# attr_timeout unset  # default\n" in text
    parsed = tomllib.loads(text)
    assert parsed == {k: v for k, v in s.items() if v is not None and k != "policy"} | {
        "tiers": {n: {k: v for k, v in t.items() if v is not None} for n, t in s["tiers"].items()}}
    shown = tmp_path / "shown.toml"
    shown.write_text(text)
    assert tierfs("config", "check", str(shown), env=env).stdout.startswith(f"{shown}: OK: ")


def test_show_of_a_file_redacts_credentials_and_names_the_environment(tmp_path, mount):
    secret, password = "s3cr3t-" + uuid.uuid4().hex, "pw-" + uuid.uuid4().hex
    path = tmp_path / "lab.toml"
    path.write_text(f'catalog = "mongodb://tierfs:{password}@db.example/tierfs?replicaSet=rs0"\n'
                    '[tiers.s3]\nkind = "s3"\nbucket = "b"\naccess_key_id = "AKID"\n'
                    f'secret_access_key = "{secret}"\n[tiers.vault]\nkind = "vault"\npath = "/v"\n')
    env = dict(mount.env, TIERFS_HOME=str(tmp_path / "h"), TIERFS_RUNTIME_DIR=str(tmp_path / "run"))
    for args in (("--json",), ()):
        r = tierfs("config", "show", "-c", str(path), *args, env=env)
        assert secret not in r.stdout + r.stderr and password not in r.stdout + r.stderr, r.stdout
    out = json.loads(tierfs("config", "show", "-c", str(path), "--json", env=env).stdout)
    assert out["settings"]["catalog"] == "mongodb://tierfs:***@db.example/tierfs?replicaSet=rs0"
    assert out["settings"]["tiers"]["s3"]["secret_access_key"] == "***"
    assert sorted(out["redacted"]) == ["catalog", "tiers.s3.access_key_id", "tiers.s3.secret_access_key"]
    assert out["settings"]["state_dir"] == str(tmp_path / "h" / "state")
    assert out["sources"]["state_dir"] == f"default under TIERFS_HOME {tmp_path / 'h'}"
    # -o with --config, as `tierfs mount -o` would run it
    out = json.loads(tierfs("config", "show", "-c", str(path), "-o", "workers=9", "--json", env=env).stdout)
    assert (out["settings"]["workers"], out["sources"]["workers"]) == (9, "-o")
    # no file, no mount: the embedded default, its tiers under $TIERFS_HOME
    out = json.loads(tierfs("config", "show", "--json", env=env).stdout)
    assert out["file"] is None and out["sources"]["tiers.disk.path"] == f"default under TIERFS_HOME {tmp_path / 'h'}"
    r = tierfs("config", "show", "-o", "workers=2", env=env, check=False)
    assert r.returncode == 2 and "-o goes with --config" in r.stderr, r.stderr


def test_check_reports_every_error_with_file_and_key(tmp_path, mount):
    env = dict(mount.env, TIERFS_RUNTIME_DIR=str(tmp_path / "run"))
    bad = tmp_path / "bad.toml"
    bad.write_text('restore_mod = "block"\nworkers = 0\n[tiers.fast]\nkind = "disk"\n'
                   '[tiers.cold]\nkind = "command"\ntimout = 5\narchive_command = "x"\nrestore_command = "y"\n')
    r = tierfs("config", "check", str(bad), env=env, check=False)
    assert r.returncode == 6 and r.stdout == "", r
    assert r.stderr.splitlines() == [
        f"tierfs: {bad}: tiers.cold.timout: unknown key (did you mean 'timeout'?)",
        f"tierfs: {bad}: restore_mod: unknown key (did you mean 'restore_mode'?)",
        f"tierfs: {bad}: workers: expected a positive integer, got 0",
        f"tierfs: {bad}: tiers.fast.path: missing"], r.stderr
    # the checks across tables and the policies, as at mount
    bad.write_text('[[policy]]\nname = "x"\naction = "archive"\nto = "nosuch"\n')
    r = tierfs("config", "check", str(bad), env=env, check=False)
    assert (r.returncode, r.stderr) == (6, f"tierfs: {bad}: policy 'x': to: no archive tier named 'nosuch' "
                                           "(archive tiers: vault)\n")
    r = tierfs("config", "check", str(tmp_path / "none.toml"), env=env, check=False)
    assert r.returncode == 6 and "does not exist" in r.stderr
    # a valid file: one line, and nothing touched; --connect finds what a mount would refuse
    good = tmp_path / "good.toml"
    good.write_text(f'catalog = "sqlite:///{tmp_path}/newdir/c.db"\n[tiers.d]\nkind = "disk"\npath = "{tmp_path}/d"\n'
                    f'[tiers.v]\nkind = "vault"\npath = "{tmp_path}/v"\n')
    r = tierfs("config", "check", str(good), env=env)
    assert r.stdout == (f"{good}: OK: catalog sqlite:///{tmp_path}/newdir/c.db; tiers d (disk), v (vault); "
                        "default tier d, archive v; 0 policy rule(s)\n"), r.stdout
    r = tierfs("config", "check", "--connect", str(good), env=env, check=False)
    assert r.returncode == 6 and r.stderr.splitlines() == [
        f"tierfs: {good}: catalog: directory {tmp_path}/newdir does not exist",
        f"tierfs: {good}: tiers.d.path: directory {tmp_path}/d does not exist",
        f"tierfs: {good}: tiers.v.path: directory {tmp_path}/v does not exist"], r.stderr
    for d in ("newdir", "d", "v"):
        os.mkdir(tmp_path / d)
    assert tierfs("config", "check", "--connect", str(good), env=env).stdout.endswith("catalog and tiers reachable\n")
    assert not os.path.exists(tmp_path / "newdir" / "c.db")       # checking never creates a catalog


def test_check_connect_says_an_unreachable_catalog(tmp_path, mount):
    env = dict(mount.env, TIERFS_RUNTIME_DIR=str(tmp_path / "run"))
    f = tmp_path / "m.toml"
    f.write_text('catalog = "mongodb://127.0.0.1:9/tierfs?serverSelectionTimeoutMS=500&connectTimeoutMS=500"\n'
                 f'[tiers.d]\nkind = "disk"\npath = "{tmp_path}"\n')
    r = tierfs("config", "check", "--connect", str(f), env=env, check=False)
    assert r.returncode == 7 and r.stderr.startswith(f"tierfs: {f}: catalog"), r


# ---- the examples --------------------------------------------------------------------
EXAMPLES = ["lab", "single-host", "tape"]


def example(m, name: str) -> str:
    return tierfs("config", "example", name, env=m.env).stdout


def test_examples_are_listed_printed_and_valid(mount, tmp_path):
    listing = tierfs("config", "example", env=mount.env).stdout.splitlines()
    assert [x.split()[0] for x in listing] == EXAMPLES and all(len(x.split()) > 4 for x in listing), listing
    for name in EXAMPLES:
        text = example(mount, name)
        assert text == open(os.path.join(ROOT, "tierfs", "examples", f"{name}.toml")).read()
        assert text.count("\n# ") >= 5, f"{name}: an example explains itself"
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        assert tierfs("config", "check", str(path), env=mount.env).stdout.startswith(f"{path}: OK: ")
    r = tierfs("config", "example", "nosuch", env=mount.env, check=False)
    assert r.returncode == 2 and "examples: lab, single-host, tape" in r.stderr


def use_example(m, text: str) -> None:
    """Mount `m` with this config file as it is (not the fixture's own)."""
    with open(m.config_path, "w") as f:
        f.write(text)
    m.write_config = lambda: None


def test_single_host_example_mounts_archives_and_runs_its_policies(make_mount, tmp_path):
    base = str(tmp_path / "site")
    m = make_mount(start=False)
    text = example(m, "single-host")
    text = text.replace("/var/lib/tierfs", f"{base}/var").replace("/srv/tierfs/disk", f"{base}/disk") \
        .replace("/mnt/archive/tierfs", f"{base}/archive")
    for d in ("var", "disk", "archive"):
        os.makedirs(f"{base}/{d}")
    use_example(m, text)
    m.start()
    with open(m.path("data.bin"), "wb") as f:
        f.write(os.urandom(2_000_000))
    m.cli("archive", "--wait", "--timeout", "60", m.path("data.bin"))
    assert m.state("data.bin") == "archived"
    assert len(open(m.path("data.bin"), "rb").read()) == 2_000_000
    s = json.loads(m.cli("status", "--json", m.mnt).stdout)[0]
    assert s["tiers"]["vault"]["files"] == 1 and [r["name"] for r in s["policies"]["rules"]] == ["cold", "fill"], s
    assert s["catalog"] == f"sqlite:///{base}/var/catalog.db"


def test_lab_example_mounts_on_mongodb_and_s3(make_mount, mongod, moto, tmp_path):
    base = str(tmp_path / "site")
    os.makedirs(f"{base}/var")
    data, archive = moto.new_bucket(), moto.new_bucket()
    m = make_mount(start=False, env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    text = example(m, "lab")
    subs = [(r'catalog = ".*"', f'catalog = "{mongod.url("lab" + uuid.uuid4().hex[:10])}"'),
            (r'endpoint_url = ".*"', f'endpoint_url = "{moto.url}"'),
            (r'bucket = "lab-data"', f'bucket = "{data}"'),
            (r'bucket = "lab-archive"', f'bucket = "{archive}"\nendpoint_url = "{moto.url}"'),
            (r'access_key_id = ".*"', 'access_key_id = "testing"'),
            (r'secret_access_key = ".*"', 'secret_access_key = "testing"'),
            (r'region = "eu-west-1"', 'region = "us-east-1"'), (r'archivers = ".*"', 'archivers = "root"'),
            ("/var/lib/tierfs", f"{base}/var")]
    for pattern, new in subs:
        text, n = re.subn(pattern, new, text)
        assert n >= 1, pattern
    use_example(m, text)
    m.start()
    payload = os.urandom(3_000_000)
    with open(m.path("run.h5"), "wb") as f:
        f.write(payload)
    m.cli("archive", "--wait", "--timeout", "60", m.path("run.h5"))
    assert m.state("run.h5") == "archived"
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=archive).get("Contents", [])]
    assert keys and all(k.startswith("tierfs/") for k in keys), keys
    m.cli("restore", "--wait", "--timeout", "60", m.path("run.h5"))
    wait_for(lambda: open(m.path("run.h5"), "rb").read() == payload, 30, what="the restored bytes")
