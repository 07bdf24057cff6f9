"""Typed settings (tierfs/settings.py): every validation error is one
ConfigError line naming the full key path, and durations and sizes are
accepted in the same forms at every key that takes one."""

from __future__ import annotations

import typing

import pytest

from tierfs import config, errors, settings
from tierfs.policy.rules import parse_rules
from tierfs.units import duration_value, size_value

DISK = {"kind": "disk", "path": "/tmp/x/disk"}
COMMAND = {"kind": "command", "archive_command": "cp {path} /x/{key}", "restore_command": "cp /x/{key} {path}"}
#: a valid table of each kind (the keys every kind requires)
TABLES = {"disk": DISK, "vault": {"kind": "vault", "path": "/tmp/x/vault"}, "command": COMMAND,
          "s3": {"kind": "s3", "bucket": "b"}, "s3-archive": {"kind": "s3-archive", "bucket": "b"},
          "gridfs": {"kind": "gridfs", "url": "mongodb://h/db"}}


def error(raw: dict) -> str:
    with pytest.raises(errors.ConfigError) as e:
        parse_rules(config.parse(raw, "/etc/tierfs/test.toml"))
    assert "\n" not in str(e.value)
    return str(e.value)


def with_tier(**table) -> dict:
    return {"tiers": {"disk": DISK, "cold": table}}


def test_a_command_tier_takes_a_duration_like_the_top_level():
    """`timeout = "1h"` was accepted at the top level but refused for a command tier."""
    cfg = config.parse(dict(with_tier(**COMMAND, timeout="2h"), block_timeout="2h"))
    assert cfg.tiers["cold"].timeout == cfg.block_timeout == 7200.0
    assert cfg.make_tiers()["cold"].timeout == 7200.0


@pytest.mark.parametrize("raw, message", [
    ({"wrokers": 2}, "wrokers: unknown key (did you mean 'workers'?)"),
    (with_tier(**COMMAND, timout="1h"), "tiers.cold.timout: unknown key (did you mean 'timeout'?)"),
    (with_tier(kind="s3", buckt="b"), "tiers.cold.buckt: unknown key (did you mean 'bucket'?)"),
    ({"policy": [{"name": "a", "action": "release"}, {"name": "b", "action": "release"},
                 {"name": "c", "action": "archive", "inactive_fr": "9d"}]},
     "policy 'c': inactive_fr: unknown key (did you mean 'inactive_for'?)"),
    (with_tier(kind="tape"), "tiers.cold.kind: unknown tier kind 'tape' (known: command, disk, gridfs, s3, "
                             "s3-archive, vault)"),
    (with_tier(path="/x"), "tiers.cold.kind: missing"),
    (with_tier(kind="s3"), "tiers.cold.bucket: missing"),
    (with_tier(kind="disk", path=3), "tiers.cold.path: expected a non-empty string, got 3"),
    ({"tiers": {"cold": "disk"}}, "tiers.cold: expected a table, got 'disk'"),
    ({"workers": "2"}, "workers: expected a positive integer, got '2'"),
    ({"xattrs": "yes"}, "xattrs: expected true or false, got 'yes'"),
    ({"restore_mode": "wait"}, "restore_mode: expected block or error, got 'wait'"),
    ({"block_timeout": "soon"}, "block_timeout: expected a duration like '90d', '12h' or '30s', got 'soon'"),
    (with_tier(**COMMAND, timeout="soon"), "tiers.cold.timeout: expected a duration like '90d'"),
    (with_tier(kind="gridfs", url="mongodb://h/db", chunk_size="big"), "tiers.cold.chunk_size: expected a size like"),
    (with_tier(kind="s3", bucket="b", max_attempts=0), "tiers.cold.max_attempts: expected an integer from 1 to 100"),
    (with_tier(kind="s3", bucket="b", multipart_chunksize="1MiB"), "tiers.cold.multipart_chunksize: must be between"),
    ({"tiers": {"disk": dict(DISK, high_watermark="90%")}}, "tiers.disk.high_watermark: expected a fraction"),
    ({"tiers": {"disk": dict(DISK, allow_users=[1.5])}}, "tiers.disk.allow_users: expected a name, an id"),
    ({"policy": [{"name": "a", "action": "archive", "max_bytes": "lots"}]}, "policy 'a': max_bytes: expected a size"),
])
def test_errors_name_the_full_key_path(raw, message):
    assert error(raw).startswith(message)


def test_an_unknown_key_is_reported_before_what_it_causes():
    """A misspelt required key is an unknown key (with the right spelling), not `bucket: missing`."""
    assert error(with_tier(kind="s3", bucket_name="b")) == \
        "tiers.cold.bucket_name: unknown key (did you mean 'bucket'?)"


def _keys_of(kind: str, model) -> list[tuple[str, str]]:
    """(kind, key) of every key of `model` whose type is `kind` (Duration or Size), optional or not."""
    def is_(annotation) -> bool:
        if typing.get_origin(annotation) is typing.Union:
            return any(is_(a) for a in typing.get_args(annotation))
        return any(getattr(m, "func", None) is kind for m in getattr(annotation, "__metadata__", ()))
    return [k for k, f in model.model_fields.items()
            if any(getattr(m, "func", None) is kind for m in f.metadata) or is_(f.annotation)]


def _every(kind) -> list[tuple[str, str]]:
    out = [("", k) for k in _keys_of(kind, settings.Settings)]
    out += [(t, k) for t, m in settings.TIER_TABLES.items() for k in _keys_of(kind, m)]
    return out + [("policy", k) for k in _keys_of(kind, settings.PolicyTable)]


DURATIONS = _every(duration_value)
SIZES = _every(size_value)


def test_the_keys_of_each_type_are_found():
    assert ("", "block_timeout") in DURATIONS and ("command", "timeout") in DURATIONS
    assert ("vault", "restore_delay") in DURATIONS and ("policy", "inactive_for") in DURATIONS
    assert ("s3", "multipart_threshold") in SIZES and ("gridfs", "chunk_size") in SIZES
    assert ("policy", "max_bytes") in SIZES and len(DURATIONS) >= 20 and len(SIZES) >= 8


def _parsed(where: str, key: str, value):
    """`value` given at `key` of the table `where` ("" top level, a tier kind, "policy"), as parsed."""
    if where == "":
        return getattr(config.parse({key: value}), key)
    if where == "policy":
        rule = {"name": "r", "action": "archive", key: value}
        if key in ("min_override", "max_override"):
            rule.update(allow_user_override=True, inactive_for="1s")
        r, = parse_rules(config.parse({"policy": [rule]}))
        return getattr(r, key)
    table = dict(TABLES[where], **{key: value})
    if key == "multipart_chunksize":
        table["multipart_threshold"] = value
    return getattr(config.parse({"tiers": {"disk": DISK, "t": table}}).tiers["t"], key)


@pytest.mark.parametrize("where, key", DURATIONS)
@pytest.mark.parametrize("value, seconds", [("2h", 7200.0), (90, 90.0), ("30s", 30.0), ("1.5m", 90.0)])
def test_durations_are_accepted_alike_everywhere(where, key, value, seconds):
    assert _parsed(where, key, value) == seconds


@pytest.mark.parametrize("where, key", SIZES)
@pytest.mark.parametrize("value, nbytes", [("10MB", 10**7), ("6MiB", 6 * 2**20), (6_000_000, 6_000_000)])
def test_sizes_are_accepted_alike_everywhere(where, key, value, nbytes):
    if (where, key) == ("gridfs", "chunk_size"):
        value, nbytes = {"10MB": ("1MB", 10**6), "6MiB": ("1MiB", 2**20)}.get(value, (4096, 4096))
    if key == "stub_bytes":   # at most 1 MiB
        value, nbytes = {"10MB": ("64kB", 64000), "6MiB": ("64KiB", 65536)}.get(value, (4096, 4096))
    assert _parsed(where, key, value) == nbytes


def test_every_tier_kind_has_a_table_and_tables_build_their_tier():
    from tierfs.tiers import KINDS, tier_class
    assert set(settings.TIER_TABLES) == set(KINDS)
    cfg = config.parse({"tiers": {"disk": DISK, "c": COMMAND}})
    tier = cfg.make_tiers()["c"]
    assert tier.settings is cfg.tiers["c"] and type(tier) is tier_class("command")


def test_defaults_are_written_once_in_the_models():
    cfg = config.parse({})
    for key, f in settings.Settings.model_fields.items():
        if f.default is not None and key not in ("tiers", "policy"):
            assert getattr(cfg, key) == f.default, key
    s3 = config.parse(with_tier(kind="s3", bucket="b")).tiers["cold"]
    assert (s3.multipart_threshold, s3.readahead, s3.addressing_style) == (16 * 2**20, 4 * 2**20, "auto")


def test_a_reload_takes_only_the_live_keys_into_the_running_config():
    old = config.parse({"tiers": {"disk": DISK}, "workers": 2})
    tiers = old.tiers
    new = config.parse({"tiers": {"disk": dict(DISK, high_watermark=0.9, low_watermark=0.5)}, "workers": 4})
    live, fixed = config.reload_changes(old, new)
    assert fixed == [] and {k for k, _, _ in live} == {"workers", "tiers.disk.high_watermark",
                                                        "tiers.disk.low_watermark"}
    old.take(new)
    assert old.workers == 4 and old.tiers is tiers and old.tiers["disk"].high_watermark == 0.9
    moved = config.parse({"tiers": {"disk": dict(DISK, path="/elsewhere")}})
    assert config.reload_changes(old, moved)[1] == ["tiers.disk"]
