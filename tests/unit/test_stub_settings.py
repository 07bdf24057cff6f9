"""stub_bytes (partial-state files, issue 18): a key of archive tiers and of archive/release rules,
at most 1 MiB (stubs live in the catalog); every error one line naming the key."""

import pytest

from tierfs import config, errors
from tierfs.policy.rules import cause_of, parse_rules, rule_of

DISK = {"kind": "disk", "path": "/tmp/x/disk"}
VAULT = {"kind": "vault", "path": "/tmp/x/vault"}


def parse(**raw):
    cfg = config.parse(dict({"tiers": {"disk": DISK, "vault": VAULT}}, **raw), "/etc/tierfs/test.toml")
    parse_rules(cfg)
    return cfg


def error(**raw) -> str:
    with pytest.raises(errors.ConfigError) as e:
        parse(**raw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_archive_tiers_take_stub_bytes_up_to_1mib():
    assert parse().tiers["vault"].stub_bytes == 0
    assert parse(tiers={"disk": DISK, "vault": dict(VAULT, stub_bytes="1MiB")}).tiers["vault"].stub_bytes == 2**20
    assert error(tiers={"disk": DISK, "vault": dict(VAULT, stub_bytes="2MiB")}) == \
        "tiers.vault.stub_bytes: expected a size from 0 to 1MiB (stubs are kept in the catalog), got 2097152"
    assert error(tiers={"disk": dict(DISK, stub_bytes=4096), "vault": VAULT}).startswith(
        "tiers.disk.stub_bytes: unknown key")


def test_rules_override_stub_bytes_for_archive_and_release_only():
    cfg = parse(policy=[{"name": "a", "action": "archive", "stub_bytes": "4KiB"},
                        {"name": "r", "action": "release"}])
    a, r = parse_rules(cfg)
    assert (a.stub_bytes, r.stub_bytes) == (4096, None)
    assert error(policy=[{"name": "m", "action": "migrate", "to": "disk", "stub_bytes": 1}]) == \
        "policy 'm': stub_bytes: only for action = \"archive\" or \"release\""
    # a job's cause names its rule: the mover finds the override through it
    assert rule_of(cause_of("a", ["size 5MB >= 1MB"]), cfg).stub_bytes == 4096
    assert rule_of("command archive by uid 0", cfg) is None
    assert rule_of(cause_of("gone", []), cfg) is None
