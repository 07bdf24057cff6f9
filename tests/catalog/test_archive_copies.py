"""Further archive copies (Inode.archive_copies) in each catalog: referenced
(the garbage collector keeps them), garbage on purge, counted per tier by
stats(), listed by tiers_in_use()."""

from tierfs.catalog.base import (ROOT_INO, Changes, Inode, JobKind, State, Transition, copies_changes, copies_of,
                                 encode_targets)


def test_further_copies_are_referenced_purged_and_counted(catalog):
    a = catalog.create(ROOT_INO, b"a", Inode(ino=0, mode=0o100644, uid=0, gid=0, size=7, tier="disk",
                                             location="k-on"))
    catalog.switch(Transition(a.ino, a.data_version, (State.ONLINE,),
                              Changes(state=State.ARCHIVED, tier=None, location=None,
                                      **copies_changes([("vault", "k1"), ("tape", "k2")])), "test"))
    got = catalog.get(a.ino)
    assert copies_of(got) == [("vault", "k1"), ("tape", "k2")]
    assert catalog.references("vault", "k1") and catalog.references("tape", "k2")
    assert not catalog.references("tape", "k1") and not catalog.references("vault", "k2")
    assert not catalog.references("tape", "k2", further=False)   # (the collector's question for an online tier)
    st = catalog.stats()
    assert st.by_archive == {"vault": (1, 7), "tape": (1, 7)}
    assert {"vault", "tape"} <= catalog.tiers_in_use()
    catalog.enqueue(a.ino, JobKind.ARCHIVE, target_tier="vault", more_targets=encode_targets(["glacier"]))
    assert "glacier" in catalog.tiers_in_use()   # an active job's further target
    catalog.unlink(ROOT_INO, b"a", 1)
    catalog.purge(a.ino)
    assert sorted((g.tier, g.key) for g in catalog.garbage()) == [("tape", "k2"), ("vault", "k1")]
    assert not catalog.references("tape", "k2")
