"""Several archive copies: the one encoding of Inode.archive_copies and
Job.more_targets (catalog/base.py), the request syntax, and `to = [..]` in
policies."""

import pytest

from tierfs import config, errors
from tierfs.catalog.base import (Inode, Job, JobKind, State, copies_changes, copies_of, copy_pattern,
                                 count_further_copies, encode_targets, missing_targets, targets_of)
from tierfs.policy.rules import parse_rules
from tierfs.requests import parse_request


def inode(**kw) -> Inode:
    return Inode(ino=2, mode=0o100644, uid=0, gid=0, **kw)


def test_copies_round_trip_primary_first():
    assert copies_of(inode()) == []
    c = copies_changes([("vault", "k1"), ("tape", "k2"), ("glacier", "k3")])
    i = inode(state=State.ARCHIVED, **c)
    assert (i.archive_tier, i.archive_location) == ("vault", "k1")
    assert copies_of(i) == [("vault", "k1"), ("tape", "k2"), ("glacier", "k3")]
    one = copies_changes([("vault", "k1")])
    assert one == dict(archive_tier="vault", archive_location="k1", archive_copies=None)
    assert copies_changes(()) == dict(archive_tier=None, archive_location=None, archive_copies=None)


def test_copy_pattern_is_a_substring_of_the_stored_text():
    """Catalog.references finds a further copy by this substring (SQL instr, a Mongo regex)."""
    text = copies_changes([("vault", "k1"), ("tape", "k2")])["archive_copies"]
    assert copy_pattern("tape", "k2") in text
    assert copy_pattern("vault", "k2") not in text and copy_pattern("tape", "k1") not in text


def test_missing_targets_and_counts():
    i = inode(state=State.DUAL, **copies_changes([("vault", "k1")]))
    assert missing_targets(i, ["vault", "tape"]) == ["tape"]
    assert missing_targets(i, ["vault"]) == []
    by = {"vault": (1, 10)}
    count_further_copies(by, [(10, copies_changes([("vault", "a"), ("tape", "b")])["archive_copies"]),
                              (5, copies_changes([("vault", "c"), ("tape", "d"), ("glacier", "e")])["archive_copies"])])
    assert by == {"vault": (1, 10), "tape": (2, 15), "glacier": (1, 5)}


def test_job_targets():
    j = Job(id=1, ino=2, kind=JobKind.ARCHIVE, target_tier="vault", more_targets=encode_targets(["tape", "vault"]))
    assert targets_of(j) == ["vault", "tape"]
    assert encode_targets([]) is None
    assert targets_of(Job(id=1, ino=2, kind=JobKind.RESTORE)) == []


def test_request_with_several_tiers():
    assert parse_request(b"archive to=vault to=tape") == ("archive", {"to": "vault", "more": ["tape"]})
    assert parse_request(b"archive keep_online to=vault") == ("archive", {"keep_online": True, "to": "vault"})
    with pytest.raises(errors.Invalid):
        parse_request(b"archive to=vault to=")


def cfg(*rules):
    raw = {"tiers": {"disk": {"kind": "disk", "path": "/tmp/x/disk"},
                     "vault": {"kind": "vault", "path": "/tmp/x/vault"},
                     "tape": {"kind": "vault", "path": "/tmp/x/tape"}},
           "policy": list(rules)}
    return config.parse(raw, "/etc/tierfs/test.toml")


def test_policy_to_a_list_of_archive_tiers():
    r, = parse_rules(cfg(dict(name="twice", action="archive", to=["vault", "tape", "vault"], path="*.raw")))
    assert (r.to, r.more_to, r.targets) == ("vault", ("tape",), ["vault", "tape"])
    assert "archive to vault, tape" in r.describe()


@pytest.mark.parametrize("rule, message", [
    (dict(action="archive", to=["vault", "disk"]), "no archive tier named 'disk'"),
    (dict(action="migrate", to=["disk", "vault"]), "a list of tiers is only for action = \"archive\""),
    (dict(action="archive", to=[]), "to:"),
    (dict(action="archive", to=["vault", 3]), "to:"),
])
def test_policy_to_list_errors(rule, message):
    with pytest.raises(errors.ConfigError) as e:
        parse_rules(cfg(dict(name="bad", path="*.raw", **rule)))
    assert message in str(e.value) and "'bad'" in str(e.value)
