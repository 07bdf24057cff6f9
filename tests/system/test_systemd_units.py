"""The systemd units: `systemd-analyze verify` prints nothing for them (any
output fails), their contract (Type=notify, restart, FUSE-compatible
hardening), and the unit's own ExecStart command line run the way systemd
runs it (NOTIFY_SOCKET: READY=1 once mounted, SIGHUP a reload that leaves
the mount alone, STOPPING=1 and a clean unmount on SIGTERM, journal-style
log lines without timestamps).

systemd is installed here but is not PID 1, so units cannot be started;
the ExecStart binary must exist for verify, so the units are rendered with
this checkout's virtualenv in place of /opt/tierfs (systemd/README.md)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tierfs import mounts
from tests.conftest import ROOT

UNITS = ("tierfs@.service", "tierfs.target")
SHIPPED = "/opt/tierfs/bin/tierfs"
#: options that give the service a private mount namespace: its FUSE mount would be invisible outside
NAMESPACE_OPTIONS = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
                     "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ProtectKernelTunables",
                     "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
                     "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "MountFlags", "RootDirectory",
                     "RootImage", "ProtectHostname", "ProtectClock", "PrivateUsers", "MountAPIVFS")


def venv_tierfs() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "tierfs")
    assert os.access(path, os.X_OK), f"{path}: run ./dev/install"
    return path


def render(tmp_path, tierfs: str | None = None) -> str:
    d = tmp_path / "units"
    d.mkdir(exist_ok=True)
    for u in UNITS:
        with open(os.path.join(ROOT, "systemd", u)) as f:
            text = f.read()
        (d / u).write_text(text.replace(SHIPPED, tierfs or venv_tierfs()))
    return str(d)


def verify(*paths: str) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd)")
    return subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, SYSTEMD_LOG_COLOR="0"))


def parse(name: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    cur = None
    with open(os.path.join(ROOT, "systemd", name)) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                cur = sections.setdefault(line.strip("[]"), {})
                continue
            k, _, v = line.partition("=")
            cur.setdefault(k, []).append(v)
    return sections


def test_units_verify_without_any_output(tmp_path):
    d = render(tmp_path)
    r = verify(f"{d}/tierfs@lab.service", f"{d}/tierfs@.service", f"{d}/tierfs.target")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_verify_would_catch_mistakes(tmp_path):
    """The check above can fail: a typo and a missing binary both print."""
    d = render(tmp_path, tierfs="/nonexistent/bin/tierfs")
    with open(f"{d}/tierfs@.service", "a") as f:
        f.write("\n[Service]\nRestartt=always\n")
    r = verify(f"{d}/tierfs@lab.service")
    out = r.stdout + r.stderr
    assert "Unknown key 'Restartt'" in out and "/nonexistent/bin/tierfs" in out


def test_unit_contract():
    u = parse("tierfs@.service")
    s = u["Service"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{SHIPPED} mount --foreground --config /etc/tierfs/%i.toml ${{TIERFS_MOUNTPOINT}}"]
    assert s["Restart"] == ["on-failure"] and s["KillSignal"] == ["SIGTERM"]
    assert s["ExecReload"] == ["/bin/sh -c 'kill -HUP $MAINPID'"]   # HUP reloads; it never unmounts
    assert s["DevicePolicy"] == ["closed"] and s["DeviceAllow"] == ["/dev/fuse rw"]
    assert "CAP_SYS_ADMIN" in s["CapabilityBoundingSet"][0].split()
    assert s["NoNewPrivileges"] == ["yes"]
    assert not [k for k in NAMESPACE_OPTIONS if k in s], "a private mount namespace hides the FUSE mount"
    assert u["Unit"]["PartOf"] == ["tierfs.target"] and u["Install"]["WantedBy"] == ["tierfs.target"]
    assert parse("tierfs.target")["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.mount
def test_execstart_runs_as_under_systemd(tmp_path):
    """ExecStartPre + ExecStart of tierfs@lab.service with /etc/tierfs and
    /srv/tierfs moved into tmp_path, a notify socket, and journal variables."""
    etc, srv, home = tmp_path / "etc", tmp_path / "srv", tmp_path / "var-lib-tierfs-lab"
    for d in (etc, home / "disk", home / "vault"):
        d.mkdir(parents=True)
    (etc / "lab.toml").write_text(f'catalog = "sqlite:///{home}/catalog.db"\nstate_dir = "{home}/state"\n'
                                  f'[tiers.disk]\nkind = "disk"\npath = "{home}/disk"\n'
                                  f'[tiers.vault]\nkind = "vault"\npath = "{home}/vault"\n')
    s = parse("tierfs@.service")["Service"]
    mnt = str(srv / "lab")

    def expand(line: str) -> list[str]:
        line = (line.replace("/etc/tierfs/", f"{etc}/").replace("${TIERFS_MOUNTPOINT}", mnt)
                .replace("%i", "lab").replace(SHIPPED, venv_tierfs()))
        return shlex.split(line)
    for pre in s.get("ExecStartPre", []):
        subprocess.run(expand(pre.lstrip("-")), check=True, timeout=30)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), INVOCATION_ID="0123456789abcdef",
               JOURNAL_STREAM="8:12345", TIERFS_HOME=str(home))
    env.pop("TIERFS_CONFIG", None)
    log = open(tmp_path / "journal.txt", "w+")
    proc = subprocess.Popen(expand(s["ExecStart"][0]), env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, cwd="/")
    try:
        assert notify.recv(4096) == b"READY=1"
        assert mounts.find_mount(mnt) is not None
        with open(os.path.join(mnt, "f"), "w") as f:
            f.write("data\n")
        held = open(os.path.join(mnt, "f"))          # a file still open at stop
        proc.send_signal(signal.SIGHUP)               # what ExecReload sends: a reload, no unmount
        deadline = time.monotonic() + 10
        while "nothing changed" not in open(tmp_path / "journal.txt").read() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and mounts.find_mount(mnt) is not None
        assert held.read() == "data\n"
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert proc.wait(timeout=60) == 0             # a clean exit: Restart=on-failure leaves it stopped
        assert mounts.wait_mounted(mnt, 10, mounted=False)   # detached although a file was open
        with pytest.raises(OSError):
            held.close()                              # (its daemon is gone)
        log.seek(0)
        lines = [ln for ln in log.read().splitlines() if ln.strip()]
        assert any(ln.startswith("INFO tierfs: tierfs mounted on " + mnt) for ln in lines), lines
        assert any(ln.startswith("INFO tierfs: tierfs unmounted from " + mnt) for ln in lines), lines
        assert any(ln.startswith("INFO tierfs: reload of ") and ln.endswith("nothing changed") for ln in lines)
        assert not [ln for ln in lines if re.match(r"\d{4}-\d\d-\d\d", ln)], "timestamps under systemd"
    finally:
        if mounts.find_mount(mnt) is not None:
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True, timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        notify.close()
        log.close()


def install_steps(tmp_path) -> list[str]:
    """The `install` lines of systemd/README.md's Install section, into tmp_path instead of /opt/tierfs."""
    with open(os.path.join(ROOT, "systemd", "README.md")) as f:
        text = f.read()
    section = text.split("## Install", 1)[1].split("\n## ", 1)[0]
    return [line.strip().split("#")[0].replace("/opt/tierfs", str(tmp_path))
            for line in section.splitlines() if line.startswith("    install ") and "/opt/tierfs" in line]


def test_documentation_names_files_the_install_steps_install(tmp_path):
    steps = install_steps(tmp_path)
    assert steps, "systemd/README.md's Install section installs nothing under /opt/tierfs"
    for step in steps:
        r = subprocess.run(["bash", "-ec", step], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{step}: {r.stderr}"
    docs = [u for v in parse("tierfs@.service")["Unit"]["Documentation"] for u in v.split()]
    assert docs
    for url in docs:
        assert url.startswith("file:///opt/tierfs/"), f"{url}: not a file the install steps put in place"
        path = url[len("file://"):].replace("/opt/tierfs", str(tmp_path))
        assert os.path.isfile(path), f"Documentation={url} is not installed by systemd/README.md's steps"
        assert os.path.getsize(path) > 0


def test_readme_fstab_line_is_a_network_mount_for_systemd(tmp_path):
    """The fstab line systemd/README.md documents, through the real
    systemd-fstab-generator: a mount unit of type fuse.tierfs that
    remote-fs.target requires (so it waits for the network: _netdev)."""
    generator = "/lib/systemd/system-generators/systemd-fstab-generator"
    if not os.access(generator, os.X_OK):
        pytest.fail(f"{generator} is missing (apt-get install systemd)")
    with open(os.path.join(ROOT, "systemd", "README.md")) as f:
        lines = [ln.strip() for ln in f if " fuse.tierfs " in ln and not ln.lstrip().startswith(("mount", "-"))]
    assert len(lines) == 1, lines
    what, where, fstype, options, *_ = lines[0].split()
    (tmp_path / "fstab").write_text(lines[0] + "\n")
    out = [tmp_path / d for d in ("normal", "early", "late")]
    for d in out:
        d.mkdir()
    r = subprocess.run([generator, *map(str, out)], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, SYSTEMD_FSTAB=str(tmp_path / "fstab"), SYSTEMD_LOG_LEVEL="err"))
    assert r.returncode == 0, r.stderr
    unit = subprocess.run(["systemd-escape", "--path", "--suffix=mount", where], capture_output=True, text=True,
                          check=True).stdout.strip()
    text = (out[0] / unit).read_text()
    assert f"What={what}\n" in text and f"Where={where}\n" in text and "Type=fuse.tierfs\n" in text
    assert f"Options={options}\n" in text and "Before=remote-fs.target" in text
    assert (out[0] / "remote-fs.target.requires" / unit).is_symlink()
