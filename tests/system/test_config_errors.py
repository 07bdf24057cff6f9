"""A configuration error through the real `tierfs` command: one line
naming the full key path, exit code 6 (client.EXIT_CONFIG)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tierfs import client

ROOT = __file__.rsplit("/tests/", 1)[0]


@pytest.mark.parametrize("toml, line", [
    ('[tiers.disk]\nkind = "disk"\npath = "/tmp"\n[tiers.cold]\nkind = "command"\narchive_command = "a"\n'
     'restore_command = "r"\ntimout = "1h"\n',
     "tierfs: configuration: tiers.cold.timout: unknown key (did you mean 'timeout'?)\n"),
    ('[tiers.disk]\nkind = "disk"\npath = "/tmp"\n[tiers.cold]\nkind = "tape"\n',
     "tierfs: configuration: tiers.cold.kind: unknown tier kind 'tape' (known: command, disk, gridfs, s3, s3-archive, "
     "vault)\n"),
    ('[tiers.disk]\nkind = "disk"\npath = "/tmp"\n[[policy]]\nname = "cold"\naction = "archive"\n'
     'inactive_fr = "9d"\n',
     "tierfs: configuration: policy 'cold': inactive_fr: unknown key (did you mean 'inactive_for'?)\n"),
])
def test_policy_check_reports_the_key_path_in_one_line(tmp_path, toml, line):
    path = tmp_path / "tierfs.toml"
    path.write_text(toml)
    r = subprocess.run([sys.executable, "-m", "tierfs.cli", "policy", "check", "-c", str(path)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={"PATH": "/usr/bin:/bin", "TIERFS_HOME": str(tmp_path / "home")})
    assert (r.returncode, r.stderr) == (client.EXIT_CONFIG, line)
