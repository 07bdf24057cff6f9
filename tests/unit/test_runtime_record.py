"""What a mount's runtime file may hold (tierfs/runtime.py): nothing secret."""

from __future__ import annotations

import os

from tierfs import runtime


def test_credentials_in_overrides_are_named_not_kept():
    rec = runtime.MountRecord.of(mountpoint="/mnt/lab/", config="lab.toml",
                                 overrides={"catalog": "mongodb://u:TOPSECRET@db/x", "workers": 4},
                                 catalog="mongodb://u:TOPSECRET@db/x", session="s1", home="/h")
    assert rec.withheld == ["catalog"] and rec.overrides == {"workers": 4}
    assert rec.catalog == "mongodb://u:***@db/x" and "TOPSECRET" not in repr(rec)
    assert rec.mountpoint == "/mnt/lab" and rec.config == os.path.abspath("lab.toml")
    assert rec.pid == os.getpid() and rec.uid == os.getuid()


def test_where_each_daemon_publishes(monkeypatch):
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert runtime.own_dir() == "/run/user/1000/tierfs"
    assert runtime.dirs_of(1000) == ["/run/user/1000/tierfs"]
    assert runtime.dirs_of(0) == [runtime.SYSTEM_DIR]
    assert runtime.dirs_of(1001) == ["/run/user/1001/tierfs", "/tmp/tierfs-1001"]
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert runtime.own_dir() == "/tmp/tierfs-1000"
    monkeypatch.setenv(runtime.RUNTIME_ENV, "/srv/run")
    assert runtime.dirs_of(0) == ["/srv/run"] == [runtime.own_dir()]
