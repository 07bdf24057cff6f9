"""Catalog conformance: every backend in CATALOG_BACKENDS must pass these
(no FUSE; the `catalog` fixture gives a fresh, initialised catalog)."""

import pytest

from tierfs import errors
from tierfs.catalog.base import (ROOT_INO, SCHEMA_VERSION, Changes, FileQuery, Inode, JobKind, JobState, Session, State,
                                 Transition, now_ns, size_class)

FILE = 0o100644
DIR = 0o040755


def new(mode=FILE, **kw):
    t = now_ns()
    base = dict(atime_ns=t, mtime_ns=t, ctime_ns=t, crtime_ns=t, state_ns=t)
    return Inode(ino=0, mode=mode, uid=1000, gid=1000, nlink=2 if mode == DIR else 1, **{**base, **kw})


def test_root_and_schema_version(catalog):
    root = catalog.get(ROOT_INO)
    assert root.is_dir() and root.nlink == 2
    assert catalog.schema_version() == SCHEMA_VERSION
    catalog.init()  # idempotent
    assert catalog.get(ROOT_INO).ino == ROOT_INO


def test_create_lookup_readdir(catalog):
    a = catalog.create(ROOT_INO, b"a", new(size=5, tier="disk", location="k1"))
    d = catalog.create(ROOT_INO, b"d", new(DIR))
    assert a.ino != d.ino and a.ino > ROOT_INO
    assert catalog.lookup(ROOT_INO, b"a").location == "k1"
    assert catalog.get(ROOT_INO).nlink == 3  # one subdirectory
    with pytest.raises(errors.Exists):
        catalog.create(ROOT_INO, b"a", new())
    with pytest.raises(errors.NotFound):
        catalog.lookup(ROOT_INO, b"zz")
    with pytest.raises(errors.NotDir):
        catalog.create(a.ino, b"x", new())
    names = [e.name for e in catalog.readdir(ROOT_INO, 0, 100)]
    assert names == [b"a", b"d"]


def test_get_many_reads_the_inodes_that_exist_in_batches(catalog):
    made = [catalog.create(ROOT_INO, b"f%d" % i, new(size=i)) for i in range(1203)]   # more than one batch
    gone = made.pop(7)
    catalog.unlink(ROOT_INO, b"f7", now_ns())
    catalog.purge(gone.ino)
    got = catalog.get_many([i.ino for i in made] + [gone.ino, 10**9, made[0].ino])
    assert sorted(got) == sorted(i.ino for i in made)
    assert all(got[i.ino].size == i.size and got[i.ino] == catalog.get(i.ino) for i in made[::100])
    assert catalog.get_many([]) == {}


def test_readdir_paging_is_stable(catalog):
    for i in range(25):
        catalog.create(ROOT_INO, f"f{i:02d}".encode(), new())
    seen, pos = [], 0
    while True:
        batch = catalog.readdir(ROOT_INO, pos, 7)
        if not batch:
            break
        seen += [e.name for e in batch]
        pos = batch[-1].pos
    assert seen == [f"f{i:02d}".encode() for i in range(25)]


def test_list_dir_joins_inodes_and_the_attributes_asked_for(catalog):
    d = catalog.create(ROOT_INO, b"d", new(DIR))
    b = catalog.create(d.ino, b"b", new(size=7, tier="disk", location="kb"))
    a = catalog.create(d.ino, b"a\xff\n", new(size=3))
    sub = catalog.create(d.ino, b"sub", new(DIR))
    catalog.link(b.ino, d.ino, b"b2", now_ns())
    catalog.create(ROOT_INO, b"elsewhere", new())
    catalog.setxattr(b.ino, b"user.tierfs.pin", b"1")
    catalog.setxattr(b.ino, b"user.tierfs.placement", b"disk")
    catalog.setxattr(b.ino, b"user.other", b"x")
    catalog.setxattr(sub.ino, b"user.tierfs.placement", b"s3")
    got = catalog.list_dir(d.ino, [b"user.tierfs.pin", b"user.tierfs.placement"])
    # sorted by name bytes (b"a\xff\n" < b"b" < b"b2" < b"sub", however long each is)
    assert [(e.name, e.inode.ino) for e in got] == [(b"a\xff\n", a.ino), (b"b", b.ino), (b"b2", b.ino), (b"sub", sub.ino)]
    assert [e.xattrs for e in got] == [{}, {b"user.tierfs.pin": b"1", b"user.tierfs.placement": b"disk"},
                                       {b"user.tierfs.pin": b"1", b"user.tierfs.placement": b"disk"},
                                       {b"user.tierfs.placement": b"s3"}]
    assert got[1].inode == catalog.get(b.ino) and got[3].inode.is_dir()
    assert [e.xattrs for e in catalog.list_dir(d.ino)] == [{}, {}, {}, {}]
    assert catalog.list_dir(sub.ino, [b"user.tierfs.pin"]) == []


def test_binary_and_long_names(catalog):
    weird = b"bad \xff\xfe utf8 \n newline"
    long = b"x" * 255
    catalog.create(ROOT_INO, weird, new())
    catalog.create(ROOT_INO, long, new())
    assert catalog.lookup(ROOT_INO, weird).ino
    assert catalog.lookup(ROOT_INO, long).ino


def test_link_unlink_purge_garbage(catalog):
    a = catalog.create(ROOT_INO, b"a", new(tier="disk", location="obj-a"))
    d = catalog.create(ROOT_INO, b"d", new(DIR))
    assert catalog.link(a.ino, d.ino, b"b", now_ns()).nlink == 2
    assert catalog.unlink(ROOT_INO, b"a", now_ns()).nlink == 1
    assert catalog.lookup(d.ino, b"b").ino == a.ino
    assert catalog.purge(a.ino) is None  # still linked
    assert catalog.unlink(d.ino, b"b", now_ns()).nlink == 0
    assert [i.ino for i in catalog.unlinked()] == [a.ino]
    assert catalog.purge(a.ino).ino == a.ino
    with pytest.raises(errors.NotFound):
        catalog.get(a.ino)
    g = catalog.garbage()
    assert [(x.tier, x.key) for x in g] == [("disk", "obj-a")]
    catalog.remove_garbage([x.id for x in g])
    assert catalog.garbage() == []


def test_remove_purges_the_last_name_in_one_call_unless_held(catalog):
    """remove() = unlink() + purge() in one transaction; a held inode (open on this mount) or one
    with names left stays; a directory is refused as unlink() refuses it."""
    a = catalog.create(ROOT_INO, b"a", new(tier="disk", location="obj-a"))
    d = catalog.create(ROOT_INO, b"d", new(DIR))
    catalog.link(a.ino, d.ino, b"b", now_ns())
    inode, purged = catalog.remove(ROOT_INO, b"a", now_ns(), lambda i: False)
    assert (inode.nlink, purged) == (1, False)
    assert catalog.get(a.ino).nlink == 1
    seen = []
    inode, purged = catalog.remove(d.ino, b"b", now_ns(), lambda i: seen.append(i.ino) or True)
    assert (inode.nlink, purged, seen) == (0, False, [a.ino])
    assert catalog.get(a.ino).nlink == 0 and catalog.garbage() == []
    assert catalog.purge(a.ino).ino == a.ino
    c = catalog.create(ROOT_INO, b"c", new(tier="disk", location="obj-c"))
    inode, purged = catalog.remove(ROOT_INO, b"c", now_ns(), lambda i: False)
    assert (inode.ino, inode.nlink, purged) == (c.ino, 0, True)
    with pytest.raises(errors.NotFound):
        catalog.get(c.ino)
    with pytest.raises(errors.NotFound):
        catalog.lookup(ROOT_INO, b"c")
    assert sorted((x.tier, x.key) for x in catalog.garbage()) == [("disk", "obj-a"), ("disk", "obj-c")]
    with pytest.raises(errors.IsDir):
        catalog.remove(ROOT_INO, b"d", now_ns())


def test_readdir_leaves_out_the_inodes_the_caller_knows(catalog):
    d = catalog.create(ROOT_INO, b"d", new(DIR))
    made = [catalog.create(d.ino, f"f{i}".encode(), new()) for i in range(5)]
    full = catalog.readdir(d.ino, 0, 100)
    assert [e.name for e in full] == [f"f{i}".encode() for i in range(5)]
    assert [e.inode.ino for e in full] == [m.ino for m in made]
    known = {made[1].ino, made[3].ino}
    part = catalog.readdir(d.ino, 0, 100, known)
    assert [(e.pos, e.name, e.ino) for e in part] == [(e.pos, e.name, e.ino) for e in full]
    for e, f in zip(part, full):
        # an engine may leave the known ones out (the caller sets them) or hand them anyway
        assert (not e.has_inode() and e.ino in known) or e.inode == f.inode
    assert [e.has_inode() for e in part if e.ino not in known] == [True, True, True]


def test_rmdir(catalog):
    d = catalog.create(ROOT_INO, b"d", new(DIR))
    catalog.create(d.ino, b"f", new())
    with pytest.raises(errors.NotEmpty):
        catalog.rmdir(ROOT_INO, b"d", now_ns())
    with pytest.raises(errors.NotDir):
        catalog.rmdir(d.ino, b"f", now_ns())
    with pytest.raises(errors.IsDir):
        catalog.unlink(ROOT_INO, b"d", now_ns())
    catalog.unlink(d.ino, b"f", now_ns())
    assert catalog.rmdir(ROOT_INO, b"d", now_ns()).nlink == 0
    assert catalog.get(ROOT_INO).nlink == 2


def test_rename_variants(catalog):
    d1 = catalog.create(ROOT_INO, b"d1", new(DIR))
    d2 = catalog.create(ROOT_INO, b"d2", new(DIR))
    a = catalog.create(d1.ino, b"a", new())
    b = catalog.create(d2.ino, b"b", new())
    # plain cross-directory move
    assert catalog.rename(d1.ino, b"a", d2.ino, b"a2") is None
    assert catalog.lookup(d2.ino, b"a2").ino == a.ino
    # overwrite returns the replaced inode with nlink decremented
    replaced = catalog.rename(d2.ino, b"a2", d2.ino, b"b")
    assert replaced.ino == b.ino and replaced.nlink == 0
    assert catalog.lookup(d2.ino, b"b").ino == a.ino
    # noreplace
    c = catalog.create(d2.ino, b"c", new())
    with pytest.raises(errors.Exists):
        catalog.rename(d2.ino, b"c", d2.ino, b"b", noreplace=True)
    # exchange
    catalog.rename(d2.ino, b"c", d2.ino, b"b", exchange=True)
    assert catalog.lookup(d2.ino, b"b").ino == c.ino and catalog.lookup(d2.ino, b"c").ino == a.ino
    # directories: nlink accounting and loops
    catalog.rename(ROOT_INO, b"d1", d2.ino, b"d1")
    assert catalog.get(ROOT_INO).nlink == 3 and catalog.get(d2.ino).nlink == 3
    with pytest.raises(errors.Invalid):
        catalog.rename(ROOT_INO, b"d2", d1.ino, b"loop")
    e = catalog.create(ROOT_INO, b"e", new(DIR))
    catalog.create(e.ino, b"x", new())
    with pytest.raises(errors.NotEmpty):
        catalog.rename(d2.ino, b"d1", ROOT_INO, b"e")
    with pytest.raises(errors.IsDir):
        catalog.rename(d2.ino, b"b", ROOT_INO, b"e")
    with pytest.raises(errors.NotDir):
        catalog.rename(ROOT_INO, b"e", d2.ino, b"b")
    assert catalog.path_of(a.ino) == b"d2/c"


def test_rename_of_big_directory_is_one_update(catalog):
    d = catalog.create(ROOT_INO, b"big", new(DIR))
    for i in range(300):
        catalog.create(d.ino, b"f%d" % i, new())
    catalog.rename(ROOT_INO, b"big", ROOT_INO, b"big2")
    assert catalog.lookup(ROOT_INO, b"big2").ino == d.ino
    assert len(catalog.readdir(d.ino, 0, 1000)) == 300


def test_update_cas_and_bump(catalog):
    a = catalog.create(ROOT_INO, b"a", new(checksum="x" * 64))
    b = catalog.bump_version(a.ino, {"size": 10})
    assert b.data_version == a.data_version + 1 and b.checksum is None and b.size == 10
    with pytest.raises(errors.VersionConflict):
        catalog.update(a.ino, {"size": 1}, expect_version=a.data_version)
    with pytest.raises(errors.VersionConflict):
        catalog.update(a.ino, {"size": 1}, expect_states=[State.ARCHIVED])
    assert catalog.update(a.ino, {"size": 3}, expect_version=b.data_version).size == 3


def test_switch_is_atomic_compare_and_swap(catalog):
    a = catalog.create(ROOT_INO, b"a", new(tier="disk", location="k-on"))
    job, _ = catalog.enqueue(a.ino, JobKind.ARCHIVE, target_tier="vault")
    catalog.update_job(job.id, {"dst_key": "k-arch"})
    new_inode = catalog.switch(Transition(a.ino, a.data_version, (State.ONLINE,),
                                          Changes(state=State.ARCHIVED, tier=None, location=None,
                                                  archive_tier="vault", archive_location="k-arch"),
                                          "test", "detail", garbage=(("disk", "k-on"),), job_id=job.id))
    assert new_inode.state == State.ARCHIVED
    got = catalog.get(a.ino)
    assert got.state == State.ARCHIVED and got.archive_location == "k-arch" and got.location is None
    assert catalog.get_job(job.id).dst_key is None
    assert [(g.tier, g.key) for g in catalog.garbage()] == [("disk", "k-on")]
    ev = catalog.events(a.ino)
    assert ev[0].from_state == "online" and ev[0].to_state == "archived" and ev[0].cause == "test"
    with pytest.raises(errors.VersionConflict):  # stale version: nothing changes
        catalog.switch(Transition(a.ino, a.data_version + 5, (State.ARCHIVED,), Changes(state=State.ONLINE), "t",
                                  garbage=(("x", "y"),)))
    assert catalog.get(a.ino).state == State.ARCHIVED and len(catalog.garbage()) == 1
    assert catalog.references("vault", "k-arch") and not catalog.references("disk", "k-on")


def test_xattrs(catalog):
    a = catalog.create(ROOT_INO, b"a", new())
    catalog.setxattr(a.ino, b"user.a", b"1")
    catalog.setxattr(a.ino, b"user.b", b"\x00" * 65536)
    assert catalog.getxattr(a.ino, b"user.b") == b"\x00" * 65536
    with pytest.raises(errors.Exists):
        catalog.setxattr(a.ino, b"user.a", b"2", create=True)
    with pytest.raises(errors.NoAttr):
        catalog.setxattr(a.ino, b"user.c", b"2", replace=True)
    assert catalog.listxattr(a.ino) == [b"user.a", b"user.b"]
    catalog.removexattr(a.ino, b"user.a")
    with pytest.raises(errors.NoAttr):
        catalog.getxattr(a.ino, b"user.a")
    with pytest.raises(errors.NoAttr):
        catalog.removexattr(a.ino, b"user.a")


def test_jobs_coalesce_priority_claim(catalog):
    a = catalog.create(ROOT_INO, b"a", new())
    b = catalog.create(ROOT_INO, b"b", new())
    j1, c1 = catalog.enqueue(a.ino, JobKind.ARCHIVE, target_tier="vault", cause="x")
    j2, c2 = catalog.enqueue(a.ino, JobKind.ARCHIVE, target_tier="vault", cause="y")
    assert c1 and not c2 and j1.id == j2.id
    r, _ = catalog.enqueue(b.ino, JobKind.RESTORE)
    first = catalog.claim("s1")
    assert first.id == r.id and first.state == JobState.RUNNING and first.attempts == 1  # restores first
    assert catalog.claim("s1", busy_tiers=["vault"]) is None
    second = catalog.claim("s2")
    assert second.id == j1.id
    assert catalog.claim("s2") is None
    catalog.retry_job(second.id, "boom", 3600)
    assert catalog.claim("s2") is None  # not before the delay
    assert catalog.get_job(second.id).last_error == "boom"
    catalog.finish_job(first.id, JobState.DONE)
    assert [j.id for j in catalog.jobs([JobState.DONE])] == [first.id]
    assert catalog.cancel_jobs(kind=JobKind.ARCHIVE) == 1
    assert catalog.get_job(j1.id).state == JobState.CANCELLED


def test_jobs_claim_by_tier_waits_and_superseded_failures(catalog):
    """claim(tiers=, skip=): a mount takes only jobs it can run; retry_job(count=False): a
    wait is no attempt; finish_job(DONE) ends the file's older failed jobs of the kind."""
    a = catalog.create(ROOT_INO, b"a", new())
    b = catalog.create(ROOT_INO, b"b", new())
    glacier, _ = catalog.enqueue(a.ino, JobKind.ARCHIVE, target_tier="glacier")
    restore, _ = catalog.enqueue(b.ino, JobKind.RESTORE)
    assert catalog.claim("s", tiers=["disk", "vault"], skip=[restore.id]) is None
    got = catalog.claim("s", tiers=["disk", "vault"])
    assert got.id == restore.id                        # no target tier: any mount may take it
    catalog.retry_job(got.id, "waiting: tier vault is unavailable", 0, count=False)
    assert catalog.get_job(got.id).attempts == 0       # the run was a wait, not an attempt
    got = catalog.claim("s", tiers=["disk", "vault"])
    assert got.id == restore.id and got.attempts == 1
    catalog.finish_job(got.id, JobState.FAILED, "copy missing")
    assert catalog.claim("s", tiers=["glacier"]).id == glacier.id
    again, created = catalog.enqueue(b.ino, JobKind.RESTORE)
    assert created
    catalog.claim("s")
    catalog.finish_job(again.id, JobState.DONE)
    old = catalog.get_job(restore.id)
    assert old.state == JobState.CANCELLED and old.last_error == f"superseded by job {again.id}"
    assert catalog.jobs([JobState.FAILED]) == []


def test_tiers_in_use(catalog):
    catalog.create(ROOT_INO, b"a", new(tier="disk", location="k1"))
    catalog.create(ROOT_INO, b"b", new(state=State.ARCHIVED, archive_tier="glacier", archive_location="k2"))
    c = catalog.create(ROOT_INO, b"c", new(tier="disk2", location="k3"))
    catalog.enqueue(c.ino, JobKind.MIGRATE, target_tier="s3")
    catalog.add_garbage([("old", "k4")])
    assert catalog.tiers_in_use() == {"disk", "disk2", "glacier", "s3", "old"}


def test_jobs_of_a_file_newest_first(catalog):
    """A file keeps every job it ever had; user.tierfs.info lists its newest (the default order,
    most urgent first, put its oldest restores first and hid its current job)."""
    a = catalog.create(ROOT_INO, b"a", new())
    ids = []
    for kind in [JobKind.ARCHIVE, JobKind.RESTORE] * 3:
        job, _ = catalog.enqueue(a.ino, kind)
        catalog.finish_job(job.id, JobState.DONE)
        ids.append(job.id)
    current, _ = catalog.enqueue(a.ino, JobKind.ARCHIVE)
    assert [j.id for j in catalog.jobs(None, a.ino, 3, newest_first=True)] == [current.id, ids[-1], ids[-2]]
    assert [j.id for j in catalog.jobs(None, a.ino, 3)] == [ids[1], ids[3], ids[5]]   # restores first


def test_sessions_reap_returns_jobs(catalog):
    t = now_ns()
    catalog.register_session(Session(id="dead", host="h", pid=1, mountpoint="/m", started_ns=t,
                                     heartbeat_ns=t - 10**11))
    catalog.register_session(Session(id="live", host="h", pid=2, mountpoint="/m2", started_ns=t, heartbeat_ns=t))
    a = catalog.create(ROOT_INO, b"a", new())
    catalog.enqueue(a.ino, JobKind.ARCHIVE, target_tier="vault")
    job = catalog.claim("dead")
    assert catalog.acquire_lease("policy", "dead", 3600)
    assert not catalog.acquire_lease("policy", "live", 60)
    assert catalog.reap_sessions(t - 10**10) == ["dead"]
    assert catalog.get_job(job.id).state == JobState.PENDING
    assert catalog.acquire_lease("policy", "live", 60)
    catalog.heartbeat("live")
    catalog.end_session("live")
    assert {s.id: s.clean for s in catalog.sessions()} == {"dead": True, "live": True}


def test_query_and_stats(catalog):
    old = now_ns() - 100 * 86400 * 10**9
    for i in range(10):
        catalog.create(ROOT_INO, b"f%d" % i, new(size=i * 1000, tier="disk", location=f"k{i}", atime_ns=old + i,
                                                 mtime_ns=old + i))
    catalog.create(ROOT_INO, b"dir", new(DIR))
    catalog.rows_read = 0
    got = list(catalog.query(FileQuery(states=(State.ONLINE,), min_size=5000, last_access_before_ns=now_ns())))
    assert sorted(i.size for i in got) == [5000, 6000, 7000, 8000, 9000]
    assert catalog.rows_read == 5
    # a policy rule's candidates: the same files, as Candidates (the candidates index alone)
    cands = list(catalog.candidates(FileQuery(states=(State.ONLINE,), min_size=5000, last_access_before_ns=now_ns())))
    assert sorted((c.ino, c.size, c.tier, c.last_access_ns) for c in cands) == \
        sorted((i.ino, i.size, i.tier, i.last_access_ns) for i in got) and catalog.rows_read == 10
    ordered = list(catalog.query(FileQuery(order_by_last_access=True, limit=3)))
    assert [i.size for i in ordered] == [0, 1000, 2000]
    page = list(catalog.query(FileQuery(limit=4)))
    page2 = list(catalog.query(FileQuery(limit=4, after_ino=page[-1].ino)))
    assert len(page2) == 4 and page2[0].ino > page[-1].ino
    st = catalog.stats()
    assert st.by_state["online"] == (10, 45000)
    assert st.by_tier["disk"] == (10, 45000)


def stored(catalog, ino: int, field: str) -> int:
    """A derived inode field (last_access_ns, size_class) as the catalog stores it: what its index holds."""
    if hasattr(catalog, "db"):
        return catalog.inodes.find_one({"_id": ino})[field]
    c = catalog.connect()
    try:
        return c.execute(f"SELECT {field} FROM inodes WHERE ino = ?", (ino,)).fetchone()[0]
    finally:
        c.close()


def test_last_access_stays_the_later_of_atime_and_mtime_through_every_write(catalog):
    """The stored, indexed last_access_ns (what inactivity queries bound and
    order by) equals max(atime_ns, mtime_ns) after each write that changes
    either time, a time set back included; it cannot be set on its own."""
    def check(*inos):
        for ino in inos:
            i = catalog.get(ino)
            assert stored(catalog, ino, "last_access_ns") == i.last_access_ns == max(i.atime_ns, i.mtime_ns), i

    d = catalog.create(ROOT_INO, b"d", new(DIR, atime_ns=100, mtime_ns=200))
    f = catalog.create(d.ino, b"f", new(atime_ns=1000, mtime_ns=500))
    g, = catalog.create_many([(d.ino, b"g", new(atime_ns=300, mtime_ns=700))], ctime_ns=now_ns())
    check(ROOT_INO, d.ino, f.ino, g.ino)                  # created, and the parents' mtimes they set
    for changes in ({"mtime_ns": 2000},                   # written: only mtime given
                    {"mtime_ns": 400},                    # touch -m -d: back, the atime is later again
                    {"atime_ns": 50},                     # touch -a -d: back, the mtime is later
                    {"atime_ns": 60, "mtime_ns": 70},
                    {"size": 3}):                         # neither time
        catalog.update(f.ino, changes)
        check(f.ino)
    catalog.bump_version(f.ino, {"mtime_ns": 3000, "size": 9})
    check(f.ino)
    catalog.set_atimes({f.ino: 4000, g.ino: 10})          # g's atime stays: it never goes back
    check(f.ino, g.ino)
    catalog.switch(Transition(f.ino, catalog.get(f.ino).data_version, (State.ONLINE,), Changes(atime_ns=5000),
                              "test"))
    check(f.ino)                                          # a restore resets the access time
    catalog.link(g.ino, ROOT_INO, b"g2", ctime_ns=6000)
    catalog.unlink(d.ino, b"f", ctime_ns=6500)
    catalog.rename(ROOT_INO, b"g2", d.ino, b"g3", ctime_ns=7000)
    check(ROOT_INO, d.ino, g.ino)
    with pytest.raises(errors.Invalid):
        catalog.update(g.ino, {"last_access_ns": 1})


def test_inactivity_queries_count_a_write_as_use(catalog):
    """A log appended to a minute ago but not read for 200 days is not
    inactive; the least recently used order counts writes too."""
    now, day = now_ns(), 86400 * 10**9
    written = catalog.create(ROOT_INO, b"app.log", new(size=10, atime_ns=now - 200 * day, mtime_ns=now - 60 * 10**9))
    idle = catalog.create(ROOT_INO, b"old.log", new(size=10, atime_ns=now - 200 * day, mtime_ns=now - 200 * day))
    read = catalog.create(ROOT_INO, b"read.log", new(size=10, atime_ns=now - day, mtime_ns=now - 300 * day))
    q = FileQuery(states=(State.ONLINE,), last_access_before_ns=now - 90 * day)
    assert [i.ino for i in catalog.query(q)] == [idle.ino]
    assert [r[2] for r in catalog.query_names(q)] == [idle.ino]
    assert catalog.count_by(q, "state") == {"online": (1, 10)}
    lru = [idle.ino, read.ino, written.ino]
    assert [i.ino for i in catalog.query(FileQuery(states=(State.ONLINE,), order_by_last_access=True))] == lru
    assert [i.ino for i in catalog.query(FileQuery(order_by_last_access=True, name_glob=b"*.log"))] == lru


def test_size_class_stays_the_bit_length_of_the_size_through_every_write(catalog):
    """The stored, indexed size_class (the policy queries with a size and an
    inactivity bound walk one range per class) equals size_class(size) after
    every write that sets the size."""
    def check(*inos):
        for ino in inos:
            i = catalog.get(ino)
            assert stored(catalog, ino, "size_class") == size_class(i.size) == i.size.bit_length(), i

    f = catalog.create(ROOT_INO, b"f", new(size=1 << 28))
    g, h = catalog.create_many([(ROOT_INO, b"g", new(size=0)), (ROOT_INO, b"h", new(size=(1 << 40) + 1))],
                               ctime_ns=now_ns())
    check(f.ino, g.ino, h.ino)
    for changes in ({"size": (1 << 28) - 1}, {"size": 0}, {"size": 1}, {"size": (1 << 62) + 5}, {"mtime_ns": 9}):
        catalog.update(f.ino, changes)
        check(f.ino)
    catalog.bump_version(g.ino, {"mtime_ns": 3000, "size": 4097})
    check(g.ino)
    catalog.switch(Transition(h.ino, catalog.get(h.ino).data_version, (State.ONLINE,), Changes(size=77), "test"))
    check(h.ino)


def test_size_and_inactivity_bounds_select_exactly_the_matching_files(catalog):
    """Sizes at and around powers of two, every pair of bounds among them
    (the boundaries of the size classes): the query returns exactly what a
    filter over every file returns, also after sizes change."""
    now, day = now_ns(), 86400 * 10**9
    sizes = sorted({max(0, (1 << k) + d) for k in (0, 1, 9, 10, 28, 29, 40) for d in (-1, 0, 1)})
    files = []
    for i, size in enumerate(sizes):
        old = i % 3 != 0
        files.append(catalog.create(ROOT_INO, b"f%03d" % i, new(size=size, atime_ns=now - (200 if old else 1) * day,
                                                               mtime_ns=now - 300 * day)))
    for f in files[::4]:   # grown past a class, shrunk below one
        catalog.update(f.ino, {"size": f.size * 2 + 1 if f.size % 2 else f.size // 3})
    inodes = [catalog.get(f.ino) for f in files]
    cutoff = now - 90 * day
    bounds = [None, *sizes[::2]]
    for lo in bounds:
        for hi in bounds:
            q = FileQuery(states=(State.ONLINE,), min_size=lo, max_size=hi, last_access_before_ns=cutoff)
            want = sorted(i.ino for i in inodes if i.last_access_ns < cutoff and (lo is None or i.size >= lo)
                          and (hi is None or i.size <= hi))
            assert sorted(i.ino for i in catalog.query(q)) == want, (lo, hi)
            assert sorted(r[2] for r in catalog.query_names(q)) == want, (lo, hi)


def test_atime_batch_never_goes_back(catalog):
    a = catalog.create(ROOT_INO, b"a", new(atime_ns=1000))
    b = catalog.create(ROOT_INO, b"b", new(atime_ns=5000))
    before = catalog.atime_writes
    catalog.set_atimes({a.ino: 2000, b.ino: 3000})
    assert catalog.get(a.ino).atime_ns == 2000 and catalog.get(b.ino).atime_ns == 5000
    assert catalog.atime_writes - before == 2


def test_meta(catalog):
    assert catalog.get_meta("nope") is None
    catalog.set_meta("k", "v1")
    catalog.set_meta("k", "v2")
    assert catalog.get_meta("k") == "v2"


def test_bury_keeps_a_tombstone_and_removes_every_name(catalog):
    d = catalog.create(ROOT_INO, b"d", new(DIR))
    a = catalog.create(d.ino, b"a", new(size=7, tier="disk", location="obj-a", archive_tier="vault",
                                        archive_location="arc-a", state=State.DUAL, checksum="ab" * 32))
    catalog.link(a.ino, ROOT_INO, b"hard", now_ns())
    catalog.enqueue(a.ino, JobKind.RELEASE, cause="x")
    with pytest.raises(errors.VersionConflict):
        catalog.bury(a.ino, "policy rule 'r'", "why", expect_version=a.data_version + 1)
    assert catalog.lookup(d.ino, b"a").ino == a.ino  # a lost compare-and-swap changes nothing
    with pytest.raises(errors.Invalid):
        catalog.bury(d.ino, "policy rule 'r'", "a directory")
    t = catalog.bury(a.ino, "policy rule 'r' (session s)", "created 400d ago > 365d", expect_version=a.data_version)
    assert (t.ino, t.path, t.size, t.state, t.tier, t.archive_tier) == (a.ino, b"d/a", 7, "dual", "disk", "vault")
    assert t.who == "policy rule 'r' (session s)" and t.why == "created 400d ago > 365d" and t.deleted_ns > 0
    for parent, name in ((d.ino, b"a"), (ROOT_INO, b"hard")):
        with pytest.raises(errors.NotFound):
            catalog.lookup(parent, name)
    assert [e.name for e in catalog.readdir(d.ino, 0, 10)] == []
    assert catalog.get(a.ino).nlink == 0 and a.ino in [i.ino for i in catalog.unlinked()]
    assert [j.state for j in catalog.jobs(ino=a.ino)] == [JobState.CANCELLED]
    assert catalog.events(a.ino, 1)[0].to_state == "deleted"
    with pytest.raises(errors.NotFound):
        catalog.bury(a.ino, "again", "no name left")
    catalog.purge(a.ino)
    assert sorted((g.tier, g.key) for g in catalog.garbage()) == [("disk", "obj-a"), ("vault", "arc-a")]
    assert [x.id for x in catalog.tombstones(ino=a.ino)] == [t.id] == [x.id for x in catalog.tombstones()]


# ---- bulk registration and find/du queries (tierfs import, find, du) ----------------
def _tree(catalog):
    """/a (dir) {x.raw 10, y.txt 20, b (dir) {z.raw 30 archived}} /c (dir) {w.raw 40}; x.raw also /c/x-link."""
    a = catalog.create(ROOT_INO, b"a", new(DIR))
    b = catalog.create(a.ino, b"b", new(DIR))
    c = catalog.create(ROOT_INO, b"c", new(DIR))
    x = catalog.create(a.ino, b"x.raw", new(size=10, tier="disk", location="kx"))
    y = catalog.create(a.ino, b"y.txt", new(size=20, tier="disk", location="ky").copy(uid=7))
    z = catalog.create(b.ino, b"z.raw", new(size=30, state=State.ARCHIVED, archive_tier="vault",
                                             archive_location="az"))
    w = catalog.create(c.ino, b"w.raw", new(size=40, tier="disk", location="kw"))
    catalog.link(x.ino, c.ino, b"x-link", now_ns())
    return dict(a=a, b=b, c=c, x=x, y=y, z=z, w=w)


def test_create_many_is_atomic(catalog):
    d = catalog.create(ROOT_INO, b"d", new(DIR))
    t = now_ns()
    made = catalog.create_many([(d.ino, b"f%d" % k, new(size=k, tier="disk", location=f"sub/f{k}"))
                                for k in range(300)] + [(d.ino, b"sub", new(DIR))], t)
    assert len(made) == 301 and len({m.ino for m in made}) == 301
    assert catalog.lookup(d.ino, b"f7").ino == made[7].ino and catalog.get(made[7].ino).location == "sub/f7"
    got = catalog.get(d.ino)
    assert got.nlink == 3 and got.mtime_ns == t  # one subdirectory; the parent's times
    assert catalog.create(made[-1].ino, b"deep", new()).ino  # the new directory works
    before = len(catalog.readdir(d.ino, 0, 1000))
    with pytest.raises(errors.Exists):  # one taken name: nothing of the batch is created
        catalog.create_many([(d.ino, b"new1", new()), (d.ino, b"f3", new())], now_ns())
    with pytest.raises(errors.Exists):  # the same name twice in a batch
        catalog.create_many([(d.ino, b"twice", new()), (d.ino, b"twice", new())], now_ns())
    with pytest.raises(errors.NotDir):
        catalog.create_many([(made[0].ino, b"x", new())], now_ns())
    assert len(catalog.readdir(d.ino, 0, 1000)) == before
    with pytest.raises(errors.NotFound):
        catalog.lookup(d.ino, b"new1")
    assert catalog.create_many([], now_ns()) == []


def test_query_names_globs_and_subtrees(catalog):
    t = _tree(catalog)
    names = lambda q: sorted((p, n) for p, n, _ in catalog.query_names(q))  # noqa: E731
    assert names(FileQuery(name_glob=b"*.raw")) == sorted(
        [(t["a"].ino, b"x.raw"), (t["b"].ino, b"z.raw"), (t["c"].ino, b"w.raw")])
    # every name of a hard-linked file, each with its own parent
    assert names(FileQuery(states=(State.ONLINE,), min_size=10, max_size=10)) == sorted(
        [(t["a"].ino, b"x.raw"), (t["c"].ino, b"x-link")])
    assert names(FileQuery(under=t["a"].ino)) == sorted(
        [(t["a"].ino, b"x.raw"), (t["a"].ino, b"y.txt"), (t["b"].ino, b"z.raw")])
    assert names(FileQuery(under=t["a"].ino, states=(State.ARCHIVED,))) == [(t["b"].ino, b"z.raw")]
    assert names(FileQuery(under=t["b"].ino, name_glob=b"?.raw")) == [(t["b"].ino, b"z.raw")]
    assert names(FileQuery(name_glob=b"[!xz]*")) == sorted([(t["a"].ino, b"y.txt"), (t["c"].ino, b"w.raw")])
    assert names(FileQuery(name_glob=b"*", regular_only=False, under=t["c"].ino)) == sorted(
        [(t["c"].ino, b"w.raw"), (t["c"].ino, b"x-link")])
    dirs = names(FileQuery(regular_only=False, under=ROOT_INO, name_glob=b"[abc]"))
    assert dirs == sorted([(ROOT_INO, b"a"), (t["a"].ino, b"b"), (ROOT_INO, b"c")])
    odd = catalog.create(t["c"].ino, b"caf\xe9 \xff.raw", new())  # not UTF-8
    assert (t["c"].ino, b"caf\xe9 \xff.raw", odd.ino) in list(catalog.query_names(FileQuery(name_glob=b"caf*.raw")))
    # query() takes the same filters, and returns each inode once
    assert sorted(i.ino for i in catalog.query(FileQuery(name_glob=b"x*"))) == [t["x"].ino]
    assert sorted(i.ino for i in catalog.query(FileQuery(under=t["c"].ino))) == sorted([t["x"].ino, t["w"].ino,
                                                                                         odd.ino])
    assert [i.ino for i in catalog.query(FileQuery(under=t["a"].ino, name_glob=b"*.txt"))] == [t["y"].ino]


def test_paths_of_in_bulk_with_a_directory_cache(catalog):
    t = _tree(catalog)
    cache: dict = {}
    got = catalog.paths_of([t["z"].ino, t["y"].ino, t["b"].ino, ROOT_INO, 999999], cache)
    assert got == {t["z"].ino: b"a/b/z.raw", t["y"].ino: b"a/y.txt", t["b"].ino: b"a/b", ROOT_INO: b""}
    assert cache[t["a"].ino] == b"a"  # directories on the way are remembered
    assert all(cache[k] == v for k, v in got.items() if k in cache)
    assert catalog.paths_of([t["x"].ino])[t["x"].ino] in (b"a/x.raw", b"c/x-link")
    catalog.rename(ROOT_INO, b"a", ROOT_INO, b"A")
    assert catalog.paths_of([t["z"].ino]) == {t["z"].ino: b"A/b/z.raw"}  # a fresh cache sees the rename


def test_count_by_field_and_subtree(catalog):
    t = _tree(catalog)
    assert catalog.count_by(FileQuery(), "state") == {"online": (3, 70), "archived": (1, 30)}
    assert catalog.count_by(FileQuery(), "tier") == {"disk": (3, 70), None: (1, 30)}
    assert catalog.count_by(FileQuery(under=t["a"].ino), "archive_tier") == {None: (2, 30), "vault": (1, 30)}
    assert catalog.count_by(FileQuery(under=t["a"].ino), "uid") == {1000: (2, 40), 7: (1, 20)}
    # a hard link inside the subtree counts once; one outside still counts the file
    assert catalog.count_by(FileQuery(under=t["c"].ino), "state") == {"online": (2, 50)}
    assert catalog.count_by(FileQuery(under=t["b"].ino, states=(State.ONLINE,)), "state") == {}
    assert catalog.count_by(FileQuery(name_glob=b"*.raw"), "gid") == {1000: (3, 80)}
    with pytest.raises(errors.Invalid):
        catalog.count_by(FileQuery(), "mode")


def test_open_files_registry(catalog):
    """set_open: a move never switches a file another session writes, and an
    unlinked file stays while any session has it open."""
    a = catalog.create(ROOT_INO, b"a", new(tier="disk", location="k"))
    assert catalog.set_open(a.ino, "A", True, True).ino == a.ino
    with pytest.raises(errors.VersionConflict):
        catalog.switch(Transition(a.ino, a.data_version, (State.ONLINE,), Changes(state=State.ARCHIVING), "t",
                                  no_writers_except="B"))
    # the writer itself, or a switch that does not ask, is not refused
    catalog.switch(Transition(a.ino, a.data_version, (State.ONLINE,), Changes(state=State.ONLINE), "t",
                              no_writers_except="A"))
    catalog.set_open(a.ino, "A", True, False)  # still open, no longer writing
    catalog.switch(Transition(a.ino, a.data_version, (State.ONLINE,), Changes(state=State.ARCHIVING), "t",
                              no_writers_except="B"))
    catalog.unlink(ROOT_INO, b"a", now_ns())
    assert catalog.purge(a.ino) is None  # session A still has it open
    catalog.set_open(a.ino, "A", False, False)
    assert catalog.purge(a.ino).ino == a.ino
    # records of a reaped session go with it
    t = now_ns()
    b = catalog.create(ROOT_INO, b"b", new())
    catalog.register_session(Session(id="dead", host="h", pid=1, mountpoint="/m", started_ns=t, heartbeat_ns=0))
    catalog.set_open(b.ino, "dead", True, True)
    catalog.reap_sessions(t)
    catalog.switch(Transition(b.ino, b.data_version, (State.ONLINE,), Changes(state=State.ARCHIVING), "t",
                              no_writers_except="live"))


# ---- partial-state files: stubs (issue 18) ---------------------------------------------------------
def _archived_with_stub(catalog, name: bytes, head: bytes):
    a = catalog.create(ROOT_INO, name, new(tier="disk", location=f"k-{name.decode()}", size=100000))
    return catalog.switch(Transition(a.ino, a.data_version, (State.ONLINE,),
                                     Changes(state=State.ARCHIVED, tier=None, location=None, archive_tier="vault",
                                             archive_location=f"a-{name.decode()}"),
                                     "archive", garbage=(("disk", f"k-{name.decode()}"),), stub=head))


def test_stub_is_stored_with_the_switch_and_kept_while_offline(catalog):
    head = bytes(range(256)) * 16 + b"\x00tail"
    a = _archived_with_stub(catalog, b"a", head)
    assert a.stub_size == len(head) and catalog.get(a.ino).stub_size == len(head)
    assert catalog.stub(a.ino) == head
    # archived -> restoring -> archived (a restore that stopped): the stub stays
    r = catalog.switch(Transition(a.ino, a.data_version, (State.ARCHIVED,), Changes(state=State.RESTORING), "open"))
    assert r.stub_size == len(head) and catalog.stub(a.ino) == head
    catalog.switch(Transition(a.ino, a.data_version, (State.RESTORING,), Changes(state=State.ARCHIVED), "stop"))
    assert catalog.get(a.ino).stub_size == len(head) and catalog.stub(a.ino) == head
    # a refused switch leaves the stub alone, and stores none of its own
    with pytest.raises(errors.VersionConflict):
        catalog.switch(Transition(a.ino, a.data_version + 1, (State.ARCHIVED,), Changes(state=State.ARCHIVED), "x",
                                  stub=b"other"))
    assert catalog.stub(a.ino) == head
    assert catalog.stub(ROOT_INO) == b""   # no stub: empty


def test_stub_goes_when_the_file_is_online_again_or_replaced(catalog):
    a = _archived_with_stub(catalog, b"a", b"x" * 1000)
    # restored: dual, the stub goes in the same commit
    d = catalog.switch(Transition(a.ino, a.data_version, (State.ARCHIVED,),
                                  Changes(state=State.DUAL, tier="disk", location="k-back"), "restore"))
    assert d.stub_size == 0 and catalog.get(a.ino).stub_size == 0 and catalog.stub(a.ino) == b""
    # released again with a new stub
    r = catalog.switch(Transition(a.ino, a.data_version, (State.DUAL,), Changes(state=State.ARCHIVED, tier=None,
                                                                              location=None), "release",
                                  stub=b"y" * 10))
    assert r.stub_size == 10 and catalog.stub(a.ino) == b"y" * 10
    # O_TRUNC of the archived file: online, archive copy dropped, stub gone
    o = catalog.switch(Transition(a.ino, a.data_version, (State.ARCHIVED,),
                                  Changes(state=State.ONLINE, tier="disk", location="k-new", archive_tier=None,
                                          archive_location=None, size=0, data_version=a.data_version + 1), "trunc"))
    assert o.stub_size == 0 and catalog.stub(a.ino) == b""
    # an explicit empty stub drops it too
    b = _archived_with_stub(catalog, b"b", b"z" * 5)
    catalog.switch(Transition(b.ino, b.data_version, (State.ARCHIVED,), Changes(state=State.ARCHIVED), "x", stub=b""))
    assert catalog.get(b.ino).stub_size == 0 and catalog.stub(b.ino) == b""


def test_stub_is_removed_with_the_inode(catalog):
    a = _archived_with_stub(catalog, b"a", b"a" * 100)
    b = _archived_with_stub(catalog, b"b", b"b" * 100)
    catalog.unlink(ROOT_INO, b"a", now_ns())
    assert catalog.stub(a.ino) == b"a" * 100        # unlinked but not purged (maybe still open)
    catalog.purge(a.ino)
    assert catalog.stub(a.ino) == b""
    catalog.bury(b.ino, "policy rule 'r'", "old")
    assert catalog.purge(b.ino) is not None and catalog.stub(b.ino) == b""


def test_bulk_names_attributes_and_active_jobs(catalog):
    """names_of / xattrs_of / with_active_jobs: a page of a policy rule's candidates read in bulk, the
    same answers as parent_of, path_of, getxattr and jobs give one file at a time."""
    d = catalog.create(ROOT_INO, b"d", new(DIR))
    a = catalog.create(d.ino, b"a", new())
    b = catalog.create(ROOT_INO, b"b", new())
    c = catalog.create(d.ino, b"c", new())
    catalog.link(a.ino, ROOT_INO, b"a2", now_ns())
    catalog.unlink(d.ino, b"c", now_ns())
    names = catalog.names_of([a.ino, b.ino, c.ino, d.ino, 99999, a.ino])
    assert set(names) == {a.ino, b.ino, d.ino}
    for ino, (parent, name) in names.items():
        assert parent == catalog.parent_of(ino) and catalog.path_of(ino).endswith(name)
    assert names[b.ino] == (ROOT_INO, b"b") and names[d.ino] == (ROOT_INO, b"d")
    catalog.setxattr(a.ino, b"user.x", b"1")
    catalog.setxattr(a.ino, b"user.y", b"\xff2")
    catalog.setxattr(b.ino, b"user.z", b"3")
    assert catalog.xattrs_of([a.ino, b.ino, d.ino], [b"user.x", b"user.y"]) == {a.ino: {b"user.x": b"1",
                                                                                       b"user.y": b"\xff2"}}
    assert catalog.xattrs_of([a.ino, b.ino], []) == {}
    job, _ = catalog.enqueue(a.ino, JobKind.ARCHIVE, target_tier="vault")
    catalog.enqueue(b.ino, JobKind.ARCHIVE, target_tier="vault")
    catalog.cancel_jobs([j.id for j in catalog.jobs(ino=b.ino)])
    assert catalog.with_active_jobs([a.ino, b.ino, d.ino]) == {a.ino}
    assert catalog.with_active_jobs([]) == set()
    many = [catalog.create(ROOT_INO, b"m%d" % i, new()).ino for i in range(1203)]   # past a batch of 500 / 1,000
    got = catalog.names_of(many)
    assert len(got) == 1203 and got[many[-1]] == (ROOT_INO, b"m1202")
