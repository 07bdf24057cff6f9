"""[[policy]] parsing and validation: every error names the rule and the key."""

import datetime

import pytest

from tierfs import config, errors
from tierfs.policy.conditions import Globs, compile_glob
from tierfs.policy.rules import parse_rules, parse_watermarks


def cfg(*rules, tiers=None):
    raw = {"tiers": tiers or {"disk": {"kind": "disk", "path": "/tmp/x/disk"},
                              "ssd": {"kind": "disk", "path": "/tmp/x/ssd"},
                              "vault": {"kind": "vault", "path": "/tmp/x/vault"}},
           "policy": list(rules)}
    return config.parse(raw, "/etc/tierfs/test.toml")


def rules(*raw):
    return parse_rules(cfg(*raw))


def error(*raw, tiers=None) -> str:
    with pytest.raises(errors.ConfigError) as e:
        c = cfg(*raw, tiers=tiers)
        parse_rules(c)
        parse_watermarks(c)
    return str(e.value)


def test_a_full_rule_parses():
    r, = rules(dict(name="cold", action="archive", inactive_for="90d", min_size="1MB", max_size="10GiB",
                    older_than="1y", modified_before="30d", path=["*.raw", "data/**"], exclude="*.tmp",
                    scope="/projects/x/", owner="root", group=0, tier="disk",
                    xattr={"user.classification": ["internal", "public"]}, allow_user_override=True,
                    min_override="7d", max_override="365d", interval="1d", initial_delay="10m",
                    max_files=100, max_bytes="1TB", rate=5))
    assert (r.to, r.inactive_for, r.min_size, r.max_size) == ("vault", 90 * 86400, 10**6, 10 * 2**30)
    assert (r.older_than, r.modified_age, r.scope, r.owners, r.groups) == (365 * 86400, 30 * 86400,
                                                                            "/projects/x", [0], [0])
    assert r.xattrs == {b"user.classification": [b"internal", b"public"]}
    assert (r.min_override, r.max_override, r.interval, r.initial_delay) == (7 * 86400, 365 * 86400, 86400, 600)
    assert r.watermark and r.rate == 5.0 and r.max_bytes == 10**12
    assert "cold: archive to vault where inactive_for 90d" in r.describe()


def test_defaults_and_dates():
    r, m = rules(dict(name="a", action="archive", modified_before="2024-01-01"),
                 dict(name="m", action="migrate", to="ssd", modified_before=datetime.date(2024, 1, 1)))
    assert r.to == "vault" and r.interval is None and r.watermark
    assert r.modified_date_ns == m.modified_date_ns > 0 and r.modified_age is None
    k, = rules(dict(name="k", action="archive", keep_online=True, allow_user_override=True, inactive_for="30d"))
    assert not k.watermark  # keep_online frees nothing
    assert k.min_override == 30 * 86400 and k.max_override is None  # users may only lengthen by default


@pytest.mark.parametrize("raw, message", [
    (dict(action="archive"), "policy #1: name: missing"),
    (dict(name="a", action="shred"), "policy 'a': action: expected one of archive, release, migrate, delete"),
    (dict(name="a", action="archive", inactive="9d"), "policy 'a': inactive: unknown key (did you mean 'inactive_for'?)"),
    (dict(name="a", action="archive", inactive_for="soon"), "policy 'a': inactive_for: expected a duration"),
    (dict(name="a", action="archive", min_size="big"), "policy 'a': min_size: expected a size"),
    (dict(name="a", action="archive", min_size="2MB", max_size="1MB"), "policy 'a': min_size: 2MB is larger than max_size"),
    (dict(name="a", action="archive", to="disk"), "policy 'a': to: no archive tier named 'disk'"),
    (dict(name="a", action="migrate"), "policy 'a': to: missing"),
    (dict(name="a", action="migrate", to="vault"), "policy 'a': to: no online tier named 'vault'"),
    (dict(name="a", action="release", to="vault"), "policy 'a': to: action 'release' takes no destination"),
    (dict(name="a", action="release", keep_online=True), "policy 'a': keep_online: only for action"),
    (dict(name="a", action="delete", older_than="1y"), "policy 'a': confirm_delete: action = \"delete\" removes"),
    (dict(name="a", action="delete", confirm_delete=True), "policy 'a': older_than: action = \"delete\" needs"),
    (dict(name="a", action="archive", confirm_delete=True), "policy 'a': confirm_delete: only for"),
    (dict(name="a", action="archive", owner="no-such-user-xyz"), "policy 'a': owner: no such user"),
    (dict(name="a", action="archive", group="no-such-group-xyz"), "policy 'a': group: no such group"),
    (dict(name="a", action="archive", tier="tape"), "policy 'a': tier: no tier named 'tape'"),
    (dict(name="a", action="archive", tier="vault"), "policy 'a': tier: 'vault' is an archive tier"),
    (dict(name="a", action="archive", scope="projects"), "policy 'a': scope: expected a directory"),
    (dict(name="a", action="archive", path=[]), "policy 'a': path: expected a glob"),
    (dict(name="a", action="archive", xattr={"security.x": "1"}), "policy 'a': xattr: 'security.x': only user.*"),
    (dict(name="a", action="archive", xattr={"user.c": 3}), "policy 'a': xattr.user.c: expected a string"),
    (dict(name="a", action="archive", allow_user_override=True), "policy 'a': allow_user_override: needs inactive_for"),
    (dict(name="a", action="archive", min_override="1d"), "policy 'a': min_override: only meaningful with"),
    (dict(name="a", action="archive", inactive_for="9d", allow_user_override=True, min_override="9d",
          max_override="1d"), "policy 'a': max_override: smaller than min_override"),
    (dict(name="a", action="archive", interval="0s"), "policy 'a': interval: at least 1s"),
    (dict(name="a", action="archive", max_files=0), "policy 'a': max_files: expected a positive integer"),
    (dict(name="a", action="archive", rate="fast"), "policy 'a': rate: expected moves per second"),
    (dict(name="a", action="delete", older_than="1y", confirm_delete=True, watermark=True),
     "policy 'a': watermark: watermark runs free online space; action 'delete'"),
    (dict(name="a", action="archive", keep_online="yes"), "policy 'a': keep_online: expected true or false"),
])
def test_errors_name_the_rule_and_the_key(raw, message):
    assert message in error(raw)


def test_duplicate_names_and_non_tables():
    assert "policy 'a': name: used by more than one rule" in error(dict(name="a", action="release"),
                                                                  dict(name="a", action="release"))
    assert "policy #2: expected a table" in error(dict(name="a", action="release"), "oops")


def test_watermarks():
    vault = {"kind": "vault", "path": "/tmp/x/vault"}
    assert parse_watermarks(cfg(tiers={"disk": {"kind": "disk", "path": "/tmp/x", "high_watermark": 0.9,
                                                "low_watermark": 0.75}, "vault": vault})) == {"disk": (0.9, 0.75)}
    assert "tiers.disk.low_watermark: missing" in error(tiers={"disk": {"kind": "disk", "path": "/x",
                                                                        "high_watermark": 0.9}, "vault": vault})
    assert "tiers.disk.low_watermark: 0.9 must be below high_watermark 0.8" in error(
        tiers={"disk": {"kind": "disk", "path": "/x", "high_watermark": 0.8, "low_watermark": 0.9}, "vault": vault})
    assert "tiers.disk.high_watermark: expected a fraction" in error(
        tiers={"disk": {"kind": "disk", "path": "/x", "high_watermark": 1.5, "low_watermark": 0.9}, "vault": vault})
    assert "watermarks apply to online tiers" in error(
        tiers={"disk": {"kind": "disk", "path": "/x"},
               "vault": dict(vault, high_watermark=0.9, low_watermark=0.5)})


@pytest.mark.parametrize("pattern, path, ok", [
    ("*.raw", "a/b/c.raw", True), ("*.raw", "a/b/c.raw.gz", False),
    ("data/*", "data/x", True), ("data/*", "data/x/y", False), ("data/**", "data/x/y", True),
    ("**/tmp/*", "tmp/a", True), ("**/tmp/*", "a/b/tmp/c", True), ("**/tmp/*", "a/tmp2/c", False),
    ("f?.[ch]", "dir/f1.c", True), ("f?.[!ch]", "f1.c", False), ("[", "[", True),
])
def test_globs(pattern, path, ok):
    assert Globs([pattern]).match(path) is ok
    assert compile_glob("a.b").match("axb") is None
