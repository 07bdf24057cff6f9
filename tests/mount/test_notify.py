"""Telling people a restore is done, through a real mount: notify_command (its
environment for restores asked by a user, by an open, failed, lost, archived;
names never interpreted; one run per dataset; its deadline), the completion
line of `restore --wait`, and `tierfs wait` for restores someone else asked for.

The notifier of these tests is a script recording each run: its exact
environment (`env -0`), its arguments and both path lists."""

import errno
import functools
import os
import pwd
import subprocess
import textwrap
import time
import uuid

import pytest

from tests.conftest import file_info as info, put_file as put, wait_for
from tests.mount.test_archive import _mount_with_vault, archive
from tierfs import client

pytestmark = pytest.mark.mount

RECORDER = textwrap.dedent("""\
    #!/bin/sh
    # one run: environment, arguments, both path lists, and whether the lists exist after it exits
    run=$(mktemp -p "$1" run.XXXXXX)
    env -0 > "$run.env"
    printf '%s\\0' "$@" > "$run.args"
    cp "$TIERFS_PATHS_FILE" "$run.paths0"
    cp "$TIERFS_PATHS_LINES_FILE" "$run.lines"
    touch "$run.done"
    """)
NOBODY = pwd.getpwnam("nobody").pw_uid


def notify_mount(make_mount, tmp_path, settings: str = "", window: float = 0, command: str | None = None,
                 catalog_url: str | None = None, **vault):
    """A mount with a disk and a vault tier whose notify_command records its runs in tmp_path/'runs dir'
    (a directory name with a space: the command line is split like a shell's, not on spaces)."""
    out = tmp_path / "runs dir"
    out.mkdir()
    script = tmp_path / "notify.sh"
    script.write_text(RECORDER)
    script.chmod(0o755)
    cmd = command or f"{script} '{out}'"
    m = _mount_with_vault(functools.partial(make_mount, catalog_url=catalog_url), tmp_path, f"job_retry_delay = 1\nnotify_batch_window = {window}\n"
                          f"notify_command = {toml_str(cmd)}\n{settings}", **vault)
    m.runs_dir = out
    return m


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def runs(m) -> list[dict]:
    """The notifier's finished runs, oldest first: env (name -> bytes), args, paths0 (exact paths), lines."""
    out = []
    for done in sorted(m.runs_dir.glob("run.*.done"), key=lambda p: p.stat().st_mtime_ns):
        base = str(done)[:-len(".done")]
        env = {}
        for item in open(base + ".env", "rb").read().split(b"\0"):
            if item:
                k, _, v = item.partition(b"=")
                env[k.decode()] = v
        out.append(dict(env=env, args=open(base + ".args", "rb").read().split(b"\0")[:-1],
                        paths0=open(base + ".paths0", "rb").read().split(b"\0")[:-1],
                        lines=open(base + ".lines", "rb").read().decode()))
    return out


def wait_runs(m, n: int, timeout: float = 30) -> list[dict]:
    return wait_for(lambda: len(runs(m)) >= n and runs(m), timeout=timeout, what=f"{n} notify run(s)")


def events(m) -> list[str]:
    return [r["env"]["TIERFS_EVENT"].decode() for r in runs(m)]


def test_restore_asked_by_a_user_tells_their_uid_and_name(make_mount, tmp_path, catalog_url):
    m = notify_mount(make_mount, tmp_path, "allow_other = true", catalog_url=catalog_url)
    os.chmod(m.mnt, 0o1777)
    # nobody's own file, archived and restored at nobody's request: the setxattr `tierfs archive` and
    # `tierfs restore` send (the CLI's interpreter lives under /root here, out of nobody's reach)
    m.sh("head -c 5000 /dev/urandom > u.bin && setfattr -n user.tierfs.request -v archive u.bin", user="nobody")
    wait_for(lambda: m.state("u.bin") == "archived", timeout=30, what="archived")
    (arch,) = wait_runs(m, 1)
    e = arch["env"]
    assert e["TIERFS_EVENT"] == b"archived" and e["TIERFS_TIER"] == b"vault" and e["TIERFS_PATH"] == b"/u.bin"
    assert e["TIERFS_UID"] == str(NOBODY).encode() and e["TIERFS_USER"] == b"nobody"
    ino = os.stat(m.path("u.bin")).st_ino
    m.sh("setfattr -n user.tierfs.request -v restore u.bin", user="nobody")
    wait_for(lambda: m.state("u.bin") == "dual", timeout=30, what="restored")
    run = wait_runs(m, 2)[1]
    e = run["env"]
    assert e["TIERFS_EVENT"] == b"restored"
    assert e["TIERFS_PATH"] == b"/u.bin" and e["TIERFS_MOUNT"] == m.mnt.encode() and e["TIERFS_DIR"] == b"/"
    assert e["TIERFS_UID"] == str(NOBODY).encode() and e["TIERFS_USER"] == b"nobody"
    assert e["TIERFS_SIZE"] == e["TIERFS_BYTES"] == b"5000" and e["TIERFS_COUNT"] == b"1"
    assert e["TIERFS_INO"] == str(ino).encode() and e["TIERFS_TIER"] == b"disk"
    assert e["TIERFS_CAUSE"] == e["TIERFS_REASON"] == f"command restore by uid {NOBODY}".encode()
    assert run["args"] == [str(m.runs_dir).encode()]   # one argument, quoted in notify_command
    assert run["paths0"] == [b"/u.bin"] and run["lines"] == "/u.bin\n"
    # the lists live until the command exits, no longer (the record above is written before it exits, so
    # the daemon's removal may come a moment after: seen once under load); -o options and home stay behind
    wait_for(lambda: not os.path.exists(e["TIERFS_PATHS_FILE"]) and not os.path.exists(e["TIERFS_PATHS_LINES_FILE"]),
             timeout=10, what="the path lists removed once the command exited")
    assert "TIERFS_HOME" not in e and "TIERFS_MOUNT_OPTIONS" not in e
    assert [j["uid"] for j in info(m, "u.bin")["jobs"]] == [NOBODY, NOBODY]


def test_open_in_error_mode_tells_the_opener(make_mount, tmp_path):
    m = notify_mount(make_mount, tmp_path, 'restore_mode = "error"')
    data = put(m, "e.bin", 100_000)
    archive(m, "e.bin")
    with pytest.raises(BlockingIOError):
        open(m.path("e.bin"), "rb")
    wait_for(lambda: "restored" in events(m), timeout=30, what="restored event")
    e = runs(m)[-1]["env"]
    assert e["TIERFS_EVENT"] == b"restored" and e["TIERFS_UID"] == b"0" and e["TIERFS_USER"] == b"root"
    assert e["TIERFS_CAUSE"].startswith(b"open by uid 0 (pid ")
    assert open(m.path("e.bin"), "rb").read() == data


def test_a_lost_archive_copy_and_a_failed_restore_are_told(make_mount, tmp_path):
    m = notify_mount(make_mount, tmp_path)
    put(m, "gone.bin", 2000)
    archive(m, "gone.bin")
    inf = info(m, "gone.bin")
    os.unlink(os.path.join(m.home, "vault", "objects", inf["archive_location"][:2], inf["archive_location"]))
    r = m.cli("restore", "--wait", "--timeout", "60", m.path("gone.bin"), check=False)
    assert r.returncode == client.EXIT_FAILED and "restore failed" in r.stderr, r.stdout + r.stderr
    wait_for(lambda: "lost" in events(m), timeout=30, what="lost event")
    assert events(m) == ["archived", "lost"]   # one event for one loss: not also restore_failed
    e = runs(m)[-1]["env"]
    assert e["TIERFS_PATH"] == b"/gone.bin" and b"is lost" in e["TIERFS_REASON"]
    assert m.state("gone.bin") == "lost"


def test_a_failed_copytool_restore_is_restore_failed(make_mount, tmp_path):
    store = tmp_path / "tape"
    store.mkdir()
    out = tmp_path / "runs"
    out.mkdir()
    script = tmp_path / "notify.sh"
    script.write_text(RECORDER)
    script.chmod(0o755)
    home = tmp_path / "home"
    (home / "disk").mkdir(parents=True)
    m = make_mount(config=f"""
        notify_command = ["{script}", "{out}"]
        notify_batch_window = 0
        [tiers.disk]
        kind = "disk"
        path = "{home}/disk"
        [tiers.tape]
        kind = "command"
        archive_command = "cp {{path}} {store}/{{key}}"
        restore_command = "echo 'drive 2 jammed' >&2; exit 3"
    """)
    m.runs_dir = out
    put(m, "t.bin", 3000)
    archive(m, "t.bin")
    r = m.cli("restore", "--wait", "--timeout", "60", m.path("t.bin"), check=False)
    assert r.returncode == client.EXIT_FAILED and "drive 2 jammed" in r.stderr, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("restored 0 files, 0B in "), r.stdout
    assert r.stdout.strip().endswith("; 1 failed"), r.stdout
    wait_for(lambda: "restore_failed" in events(m), timeout=30, what="restore_failed event")
    e = runs(m)[-1]["env"]
    assert e["TIERFS_TIER"] == b"tape" and b"drive 2 jammed" in e["TIERFS_REASON"]
    assert e["TIERFS_CAUSE"] == b"command restore by uid 0"
    # The failed restore settles the file back (it stayed `restoring`, with no job, until the next
    # mount's recovery: a failure before the copy was never undone).
    assert m.state("t.bin") == "archived"
    assert "restore failed (command restore by uid 0)" in m.cli("state", "-v", m.path("t.bin")).stdout
    r = m.cli("wait", m.path("t.bin"), "--timeout", "20", check=False)   # a failed restore is not waited for
    assert r.returncode == client.EXIT_FAILED and "drive 2 jammed" in r.stderr, r.stdout + r.stderr


def test_a_policys_archive_names_no_user(make_mount, tmp_path):
    m = notify_mount(make_mount, tmp_path, textwrap.dedent("""
        [[policy]]
        name = "big"
        action = "archive"
        to = "vault"
        min_size = "1MB"
        interval = "1s"
        """))
    put(m, "big.bin", 1_500_000)
    (run,) = wait_runs(m, 1)
    e = run["env"]
    assert e["TIERFS_EVENT"] == b"archived" and e["TIERFS_PATH"] == b"/big.bin"
    assert e["TIERFS_UID"] == b"" and e["TIERFS_USER"] == b"" and e["TIERFS_CAUSE"].startswith(b"policy rule 'big'")


def test_names_reach_the_command_as_they_are_never_interpreted(make_mount, tmp_path):
    m = notify_mount(make_mount, tmp_path)
    marker = f"pwned-{uuid.uuid4().hex[:8]}"
    name = f"a b 'c\" $(touch {marker}) `touch {marker}` $HOME\nline2 \\x".encode()
    with open(os.path.join(m.mnt.encode(), name), "wb") as f:
        f.write(b"x" * 1234)
    m.cli("archive", "--wait", os.path.join(m.mnt.encode(), name).decode("utf-8", "surrogateescape"))
    (run,) = wait_runs(m, 1)
    assert run["env"]["TIERFS_PATH"] == b"/" + name and run["paths0"] == [b"/" + name]
    assert run["lines"] == "/" + name.decode().replace("\n", "\\n") + "\n"   # escaped like the CLI shows it
    for d in ("/", m.runs_dir, m.mnt, tmp_path):
        assert not os.path.exists(os.path.join(d, marker))


def test_a_dataset_restore_is_one_run(make_mount, tmp_path):
    m = notify_mount(make_mount, tmp_path, window=2, restore_delay=0.2)
    os.makedirs(m.path("ds", "sub"))
    sizes = {}
    for i in range(12):
        rel = os.path.join("ds", "sub" if i % 2 else "", f"f{i:02d}")
        put(m, rel, 1000 + i)
        sizes["/" + rel] = 1000 + i
    m.cli("archive", "-r", "--wait", m.path("ds"))
    (arch,) = wait_runs(m, 1)
    assert arch["env"]["TIERFS_EVENT"] == b"archived" and arch["env"]["TIERFS_COUNT"] == b"12"
    put(m, "ds/other.bin", 10)   # online: `restore -r` of the tree counts it as already online
    t0 = time.monotonic()
    r = m.cli("restore", "-r", "--wait", m.path("ds"))
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith(f"restored 12 files, {sum(sizes.values()) / 1000:.1f}kB in ") \
        and line.endswith("s (1 already online)"), r.stdout
    assert float(line.split(" in ")[1].split("s")[0]) >= 12 * 0.2 / 2   # restores of 0.2 s, 2 at a time
    run = wait_runs(m, 2)[1]
    assert time.monotonic() - t0 < 12 * 0.2 + 2 + 10
    assert len(runs(m)) == 2   # one run for the 12 restores
    e = run["env"]
    assert e["TIERFS_EVENT"] == b"restored" and e["TIERFS_COUNT"] == b"12"
    assert e["TIERFS_BYTES"] == str(sum(sizes.values())).encode() and e["TIERFS_DIR"] == b"/ds"
    assert sorted(p.decode() for p in run["paths0"]) == sorted(sizes)
    assert e["TIERFS_PATH"] == run["paths0"][0]
    assert sorted(run["lines"].splitlines()) == sorted(sizes)


def test_a_dataset_restore_on_a_slow_medium_is_still_one_run(make_mount, tmp_path):
    """Restores end two at a time every 2.5 s, more than the 1 s window: the batch waits for the
    requester's queue to drain (a window alone made one run per pair)."""
    m = notify_mount(make_mount, tmp_path, window=1, restore_delay=2.5)
    for i in range(6):
        put(m, f"ds/f{i}", 100)
    m.cli("archive", "-r", "--wait", m.path("ds"))
    wait_runs(m, 1)
    m.cli("restore", "-r", "--wait", m.path("ds"))
    time.sleep(3)   # > the window after the last restore
    assert [(r["env"]["TIERFS_EVENT"], r["env"]["TIERFS_COUNT"]) for r in runs(m)] \
        == [(b"archived", b"6"), (b"restored", b"6")]


def test_a_slow_notifier_is_killed_at_its_deadline_and_delays_no_restore(make_mount, tmp_path):
    started = tmp_path / "started"
    m = notify_mount(make_mount, tmp_path, "notify_timeout = 1",
                     command=f"sh -c 'touch {started}; sleep 60 & sleep 60'")
    for i in range(3):
        put(m, f"s{i}", 100)
    t0 = time.monotonic()
    for i in range(3):
        archive(m, f"s{i}")
    assert time.monotonic() - t0 < 10
    wait_for(lambda: m.log().count("killed after notify_timeout (1s)") == 3, timeout=30, what="3 runs killed")
    assert started.exists()
    # the whole group went: no `sleep 60` left behind (the one the command backgrounded included)
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert f"touch {started}" not in ps


def test_unmount_waits_one_notify_timeout_for_a_hung_notifier_not_one_per_run(make_mount, tmp_path):
    m = notify_mount(make_mount, tmp_path, "notify_timeout = 3", command="sleep 61.25")
    for i in range(10):
        put(m, f"h{i}", 100)
    m.cli("archive", "--wait", *[m.path(f"h{i}") for i in range(10)])
    t0 = time.monotonic()
    m.stop()
    took = time.monotonic() - t0
    assert took < 3 + 8, took   # 10 runs of 3 s, 4 at a time, would be 9 s more
    assert "notify_command run(s) for" in m.log() and "not done within notify_timeout (3s): dropped" in m.log()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "sleep 61.25" not in ps   # the runs cut short at the daemon's end are killed too


def test_a_broken_notifier_is_one_log_line(make_mount, tmp_path):
    m = notify_mount(make_mount, tmp_path, command=f"{tmp_path}/no-such-notifier --flag")
    put(m, "b.bin", 100)
    archive(m, "b.bin")
    assert m.state("b.bin") == "archived"
    wait_for(lambda: "notify_command for archived of /b.bin: cannot run" in m.log(), timeout=30,
             what="one log line")


def test_a_failing_notifier_is_one_log_line_with_its_status_and_stderr(make_mount, tmp_path):
    m = notify_mount(make_mount, tmp_path, command="sh -c 'echo out of paper >&2; exit 3'")
    put(m, "c.bin", 100)
    archive(m, "c.bin")
    wait_for(lambda: "notify_command for archived of /c.bin: exited with status 3 in" in m.log(), timeout=30,
             what="exit status in the log")
    line = next(x for x in m.log().splitlines() if "exited with status 3" in x)
    assert line.endswith(": out of paper"), line


# ---- tierfs wait ---------------------------------------------------------------------------------
def test_wait_returns_when_another_users_restore_finishes(make_mount, tmp_path):
    m = _mount_with_vault(make_mount, tmp_path, "allow_other = true", restore_delay=2)
    os.chmod(m.mnt, 0o1777)
    m.sh("head -c 3000 /dev/urandom > theirs.bin && setfattr -n user.tierfs.request -v archive theirs.bin",
         user="nobody")
    wait_for(lambda: m.state("theirs.bin") == "archived", timeout=30, what="archived")
    m.sh("setfattr -n user.tierfs.request -v restore theirs.bin", user="nobody")   # nobody asks
    t0 = time.monotonic()
    r = m.cli("wait", m.path("theirs.bin"))                                           # root waits
    took = time.monotonic() - t0
    assert m.state("theirs.bin") == "dual"
    assert r.stdout.strip().startswith("restored 1 file, 3.0kB in "), r.stdout
    assert 1.0 < took < 30, took   # it did wait for the 2 s restore
    # nothing queued any more: an online file returns at once
    r = m.cli("wait", m.path("theirs.bin"))
    assert r.stdout.strip().endswith("(1 already online)"), r.stdout


def test_wait_times_out_and_says_what_cannot_finish(make_mount, tmp_path):
    m = _mount_with_vault(make_mount, tmp_path, restore_delay=8)
    put(m, "slow.bin", 100)
    put(m, "idle.bin", 100)
    archive(m, "slow.bin", "idle.bin")
    # archived with no restore queued: waiting cannot make it readable
    r = m.cli("wait", m.path("idle.bin"), check=False)
    assert r.returncode == client.EXIT_FAILED and "no restore is queued" in r.stderr, r.stdout + r.stderr
    m.cli("restore", m.path("slow.bin"))
    r = m.cli("wait", "--timeout", "1", m.path("slow.bin"), check=False)
    assert r.returncode == client.EXIT_TIMEOUT, r.stdout + r.stderr
    assert "1 not finished" in r.stdout and "not done after 1s" in r.stderr
    r = m.cli("wait", m.path("slow.bin"))   # (the restore takes 8 s: still running)
    assert "restored 1 file" in r.stdout, r.stdout


def test_wait_on_a_lost_file_fails(mount):
    m = mount
    put(m, "x.bin", 100)
    archive(m, "x.bin")
    inf = info(m, "x.bin")
    os.unlink(os.path.join(m.home, "vault", "objects", inf["archive_location"][:2], inf["archive_location"]))
    with pytest.raises(OSError) as e:
        open(m.path("x.bin"), "rb")
    assert e.value.errno == errno.EIO
    r = m.cli("wait", m.path("x.bin"), check=False)
    assert r.returncode == client.EXIT_FAILED and "is lost" in r.stderr, r.stdout + r.stderr
