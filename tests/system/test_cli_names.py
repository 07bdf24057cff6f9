"""Hostile file names in the CLI's output (issue 14, defect 8): any user can
plant a name holding terminal escape sequences, a newline or bytes that are
not UTF-8 in a shared directory; root's `tierfs state`, `ls`, `find`, `queue`,
`du`, `status`, `fsck` and `policy run` must show it escaped (display.py),
`find -0` must give it raw, and `--json` exactly (path_b64 when not UTF-8)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, file_info as info
from tierfs.display import name_fields, printable

pytestmark = pytest.mark.mount

#: name -> how the CLI shows it
HOSTILE = {
    b"\x1b]0;pwn\x07": "\\x1b]0;pwn\\x07",   # OSC: retitles the terminal
    b"\x1b[2J": "\\x1b[2J",                 # CSI: clears the screen
    b"a\nb": "a\\nb",                        # forges an output line
    b"\xff": "\\xff",                        # not UTF-8
}
POLICY = '''
[[policy]]
name = "everything"
action = "archive"
to = "vault"
'''


def run(m, *args) -> subprocess.CompletedProcess:
    """The CLI with bytes arguments and bytes output (names need not be UTF-8)."""
    return subprocess.run([sys.executable, "-m", "tierfs.cli", *args], capture_output=True, env=m.env, cwd=ROOT,
                          timeout=120)


def assert_clean(out: bytes) -> None:
    """Nothing a terminal would act on: no control character but the line ends, all UTF-8."""
    text = out.decode("utf-8")    # raises on invalid UTF-8
    bad = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f]
    assert not bad, (bad, text)


def test_printable_and_json_names():
    assert printable(b"ok name \xc3\xa9") == "ok name \u00e9"
    assert printable(b"\x1b]0;pwn\x07 a\nb\tc\rd\x7f\xff \xc2\x9b \xe2\x80\xae") == \
        "\\x1b]0;pwn\\x07 a\\nb\\tc\\rd\\x7f\\xff \\u009b \\u202e"
    assert printable(os.fsdecode(b"x\xfey")) == "x\\xfey"   # surrogateescape'd str, as from argv
    assert name_fields("path", b"/caf\xc3\xa9\n") == {"path": "/caf\u00e9\n"}
    assert name_fields("path", b"/\xff") == {"path": "/\\xff", "path_b64": base64.b64encode(b"/\xff").decode()}


def test_hostile_names_are_escaped_in_every_listing(make_mount):
    m = make_mount(config=POLICY)
    base = os.fsencode(m.path("shared"))
    os.mkdir(base)
    for name in HOSTILE:
        with open(os.path.join(base, name), "wb") as f:
            f.write(b"x" * 10)
    shown = [m.path("shared") + "/" + s for s in HOSTILE.values()]

    r = run(m, "state", "-r", base)
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    assert sorted(line.split("  ")[0] for line in r.stdout.decode().splitlines()) == sorted(shown)
    rows = json.loads(run(m, "state", "-r", "--json", base).stdout)
    exact = {base64.b64decode(x["path_b64"]) if "path_b64" in x else os.fsencode(x["path"]) for x in rows}
    assert exact == {os.path.join(base, n) for n in HOSTILE}

    r = run(m, "ls", "-l", base)
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    assert sorted(line.split("  ")[-1] for line in r.stdout.decode().splitlines()) == sorted(HOSTILE.values())
    out = run(m, "ls", "--json", base).stdout
    assert not re.search(rb"\\u[dD][89a-fA-F]", out), out   # no lone surrogate, which strict parsers reject
    rows = json.loads(out)
    exact = {base64.b64decode(x["path_b64"]) if "path_b64" in x else os.fsencode(x["path"]) for x in rows}
    assert exact == {os.path.join(base, n) for n in HOSTILE}

    r = run(m, "find", m.mnt)
    assert_clean(r.stdout)
    assert sorted(r.stdout.decode().splitlines()) == sorted("/shared/" + s for s in HOSTILE.values())
    r = run(m, "find", "-0", m.mnt)    # for xargs -0: the exact bytes
    assert sorted(r.stdout.split(b"\0")[:-1]) == sorted(b"/shared/" + n for n in HOSTILE)
    rows = json.loads(run(m, "find", "--json", m.mnt).stdout)
    assert {base64.b64decode(x["path_b64"]) if "path_b64" in x else x["path"].encode() for x in rows} == \
        {b"/shared/" + n for n in HOSTILE}
    assert [x["path"] for x in rows if "path_b64" in x] == ["/shared/\\xff"]

    r = run(m, "policy", "run", "--dry-run", "-c", m.config_path)
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    assert sum("/shared/" + s in r.stdout.decode() for s in HOSTILE.values()) == len(HOSTILE)

    r = run(m, "archive", *[os.path.join(base, n) for n in HOSTILE])
    assert r.returncode == 0, r.stderr
    r = run(m, "queue", "--all", m.mnt)
    assert_clean(r.stdout)
    assert sorted(line.split()[-1] for line in r.stdout.decode().splitlines()[1:]) == \
        sorted("/shared/" + s for s in HOSTILE.values())
    rows = json.loads(run(m, "queue", "--all", "--json", m.mnt).stdout)
    assert {base64.b64decode(x["path_b64"]) if "path_b64" in x else x["path"].encode() for x in rows} == \
        {b"/shared/" + n for n in HOSTILE}

    odd_dir = os.path.join(base, b"dir\x1b[2J")
    os.mkdir(odd_dir)
    r = run(m, "du", odd_dir)
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    assert r.stdout.decode().splitlines()[-1].endswith(m.path("shared", "dir\\x1b[2J"))
    r = run(m, "state", os.path.join(base, b"missing\x1b]0;pwn\x07"))
    assert r.returncode == 4
    assert_clean(r.stderr)
    assert r.stderr.decode() == f"tierfs: {m.path('shared')}/missing\\x1b]0;pwn\\x07: No such file or directory\n"



def test_hostile_names_in_fsck_and_status(make_mount):
    m = make_mount(name="mnt\x1b]0;pwn\x07")   # a user's own mount on a hostile mountpoint
    for name in ("a\x1b[2J\nb", "keep"):   # (a tier without any object is left alone: an unmounted disk?)
        with open(m.path(name), "wb") as f:
            f.write(b"data")
    key = info(m, "a\x1b[2J\nb")["location"]
    os.unlink(os.path.join(m.home, "disk", "objects", key[:2], key))   # fsck: missing online object
    r = run(m, "fsck", m.mnt)
    assert r.returncode == 1, r.stdout + r.stderr
    assert_clean(r.stdout)
    assert b"/a\\x1b[2J\\nb" in r.stdout, r.stdout
    r = run(m, "status", m.mnt)
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout)
    assert b"mount     " + m.mnt.replace("\x1b", "\\x1b").replace("\x07", "\\x07").encode() in r.stdout
