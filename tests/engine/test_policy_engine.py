"""The policy engine against real catalogs (every backend), no FUSE:
conditions alone and combined, scope, pins, xattrs, overrides and their
bounds, dry run == real run, limits, rates on an accelerated clock,
deletion with tombstones, watermark selection, paging, and the cost of a
run on a catalog of 100,000 entries."""

from __future__ import annotations

import datetime
import functools
import time

import pytest
import trio

from tierfs import config, errors
from tierfs.catalog.base import ROOT_INO, Inode, JobKind, JobState, State, now_ns
from tierfs.policy.clock import FakeClock
from tierfs.policy.engine import Engine, JobExecutor
from tierfs.policy.rules import parse_rules

DAY_NS = 86400 * 10**9
MB = 1_000_000


def day(t_ns: int) -> str:
    """The local date of a time, as explanations print it."""
    return datetime.datetime.fromtimestamp(t_ns / 1e9).strftime("%Y-%m-%d")


def make_cfg(tmp_path, *rules):
    raw = {"tiers": {name: {"kind": kind, "path": str(tmp_path / name)}
                     for name, kind in (("disk", "disk"), ("ssd", "disk"), ("vault", "vault"))},
           "policy": list(rules)}
    return config.parse(raw, str(tmp_path / "c.toml"))


class Tree:
    """Files and directories created straight in the catalog."""

    def __init__(self, catalog, now: int | None = None):
        self.c = catalog
        self.now = now or now_ns()
        self.dirs = {"": ROOT_INO}
        self.inos: dict[str, int] = {}

    def dir(self, path: str, uid: int = 1000, **xattrs) -> int:
        path = path.strip("/")
        if path not in self.dirs:
            parent, _, name = path.rpartition("/")
            t = self.now
            d = self.c.create(self.dir(parent), name.encode(), Inode(
                ino=0, mode=0o040755, uid=uid, gid=uid, nlink=2, atime_ns=t, mtime_ns=t, ctime_ns=t,
                crtime_ns=t, state_ns=t))
            self.dirs[path] = d.ino
        for k, v in xattrs.items():
            self.c.setxattr(self.dirs[path], k.replace("__", ".").encode(), str(v).encode())
        return self.dirs[path]

    def file(self, path: str, size: int = 1000, idle: float = 0, created: float = 0, modified: float | None = None,
             state: State = State.ONLINE, tier: str | None = "disk", uid: int = 1000, gid: int = 1000,
             **xattrs) -> Inode:
        """idle: days since the last read (atime); modified: days since the
        last write (mtime; default: as idle, so the file is idle that long);
        created: days since creation."""
        parent, _, name = path.strip("/").rpartition("/")
        t = self.now
        modified = idle if modified is None else modified
        archived = state in (State.ARCHIVED, State.DUAL, State.LOST)
        inode = self.c.create(self.dir(parent), name.encode(), Inode(
            ino=0, mode=0o100644, uid=uid, gid=gid, size=size, atime_ns=t - int(idle * DAY_NS),
            mtime_ns=t - int(modified * DAY_NS), ctime_ns=t, crtime_ns=t - int(created * DAY_NS), state_ns=t,
            state=state, tier=None if state in (State.ARCHIVED, State.LOST) else tier,
            location=f"obj-{name}" if state not in (State.ARCHIVED, State.LOST) else None,
            archive_tier="vault" if archived else None, archive_location=f"arc-{name}" if archived else None))
        for k, v in xattrs.items():
            self.c.setxattr(inode.ino, k.replace("__", ".").encode(), str(v).encode())
        self.inos[path.strip("/")] = inode.ino
        return inode


def run(catalog, cfg, names=None, *, dry_run=True, clock=None, page=500, executor=None):
    rules = parse_rules(cfg)
    engine = Engine(catalog, rules, clock=clock or FakeClock(), page=page, executor=executor)
    return trio.run(functools.partial(engine.run, names, dry_run=dry_run))


def paths(report) -> set[str]:
    return {a.path for a in report.actions}


@pytest.fixture
def tree(catalog):
    t = Tree(catalog)
    t.file("old_big.raw", 5 * MB, idle=120, created=400, modified=200)
    t.file("old_small.raw", 500_000, idle=120, created=400, modified=200)
    t.file("new_big.bin", 5 * MB, idle=1, created=2, modified=1)
    t.file("proj/x/data.raw", 2 * MB, idle=120, created=100, modified=95, uid=1001, gid=1001)
    t.file("proj/y/scratch.tmp", 2 * MB, idle=120, created=100, modified=95)
    t.file("on_ssd.raw", 3 * MB, idle=120, modified=95, tier="ssd")
    return t


@pytest.mark.parametrize("cond, expected", [
    ({}, {"old_big.raw", "old_small.raw", "new_big.bin", "proj/x/data.raw", "proj/y/scratch.tmp", "on_ssd.raw"}),
    ({"inactive_for": "90d"}, {"old_big.raw", "old_small.raw", "proj/x/data.raw", "proj/y/scratch.tmp", "on_ssd.raw"}),
    ({"older_than": "1y"}, {"old_big.raw", "old_small.raw"}),
    ({"modified_before": "100d"}, {"old_big.raw", "old_small.raw"}),
    ({"min_size": "1MB"}, {"old_big.raw", "new_big.bin", "proj/x/data.raw", "proj/y/scratch.tmp", "on_ssd.raw"}),
    ({"max_size": "1MB"}, {"old_small.raw"}),
    ({"path": "*.raw"}, {"old_big.raw", "old_small.raw", "proj/x/data.raw", "on_ssd.raw"}),
    ({"path": "proj/**"}, {"proj/x/data.raw", "proj/y/scratch.tmp"}),
    ({"exclude": ["*.tmp", "*.bin"]}, {"old_big.raw", "old_small.raw", "proj/x/data.raw", "on_ssd.raw"}),
    ({"scope": "/proj/x"}, {"proj/x/data.raw"}),
    ({"owner": 1001}, {"proj/x/data.raw"}),
    ({"group": [1001, 5]}, {"proj/x/data.raw"}),
    ({"tier": "ssd"}, {"on_ssd.raw"}),
    ({"inactive_for": "90d", "min_size": "1MB"}, {"old_big.raw", "proj/x/data.raw", "proj/y/scratch.tmp", "on_ssd.raw"}),
    ({"inactive_for": "90d", "min_size": "1MB", "exclude": "*.tmp", "tier": "disk"}, {"old_big.raw", "proj/x/data.raw"}),
    ({"inactive_for": "90d", "min_size": "1MB", "scope": "/proj", "path": "*.raw"}, {"proj/x/data.raw"}),
])
def test_each_condition_alone_and_combined(tree, catalog, tmp_path, cond, expected):
    report = run(catalog, make_cfg(tmp_path, dict(name="r", action="archive", **cond)))
    assert paths(report) == {"/" + p for p in expected}
    assert report.rules[0].actions == len(expected)


def test_matched_values_and_totals(tree, catalog, tmp_path):
    report = run(catalog, make_cfg(tmp_path, dict(name="cold", action="archive", inactive_for="90d",
                                                  min_size="1MB", path="*.raw", scope="/")))
    a = {x.path: x for x in report.actions}["/old_big.raw"]
    idle = f"not accessed or modified for 120d (since {day(tree.now - 120 * DAY_NS)}) > 90d"
    assert a.reasons == [idle, "size 5MB >= 1MB", "under /", "path *.raw"]
    assert a.cause == f"policy rule 'cold' ({idle}, size 5MB >= 1MB, under /, path *.raw)"
    assert a.line() == f"archive -> vault /old_big.raw (5MB): rule 'cold': {idle}, size 5MB >= 1MB, under /, path *.raw"
    # old_small is no candidate (the size rides on the last-access query: Matcher.query); scratch.tmp: path
    assert report.totals() == dict(files=3, bytes=10 * MB, freed=10 * MB, candidates=4, already_queued=0)
    assert "would act on 3 file(s), 10MB, freeing 10MB online" in report.summary()


def test_pins_on_files_and_directories(tree, catalog, tmp_path):
    tree.file("keep/deep/a.raw", 2 * MB, idle=200)
    tree.file("keep/b.raw", 2 * MB, idle=200, user__tierfs__pin=0)
    tree.dir("keep", user__tierfs__pin=1)
    tree.file("solo.raw", 2 * MB, idle=200, user__tierfs__pin=1)
    tree.file("unpinned.raw", 2 * MB, idle=200, user__tierfs__pin=0)
    tree.dir("free", user__tierfs__pin=0)
    tree.file("free/c.raw", 2 * MB, idle=200)
    report = run(catalog, make_cfg(tmp_path, dict(name="r", action="archive", inactive_for="150d")))
    # a file's own pin = 0 overrides its directory's pin
    assert paths(report) == {"/keep/b.raw", "/unpinned.raw", "/free/c.raw"}
    assert report.rules[0].skipped["pinned"] == 2


def test_xattr_matches_are_inherited(tree, catalog, tmp_path):
    tree.dir("secret", user__classification="internal")
    tree.file("secret/a.raw", idle=200)
    tree.file("secret/b.raw", idle=200, user__classification="public")
    tree.file("c.raw", idle=200, user__classification="internal")
    tree.file("d.raw", idle=200)
    report = run(catalog, make_cfg(tmp_path, dict(name="r", action="archive", inactive_for="150d",
                                                  xattr={"user.classification": "internal"})))
    assert paths(report) == {"/secret/a.raw", "/c.raw"}
    idle = f"not accessed or modified for 200d (since {day(tree.now - 200 * DAY_NS)}) > 150d"
    assert {tuple(a.reasons) for a in report.actions} == {(idle, "user.classification=internal")}


def test_user_overrides_within_bounds(catalog, tmp_path):
    t = Tree(catalog)
    t.dir("short", user__tierfs__inactive_for="20d")      # shorter: allowed down to min_override 30d
    t.dir("tiny", user__tierfs__inactive_for="1d")        # below min_override: clamped to 30d
    t.dir("long", user__tierfs__inactive_for="10y")       # above max_override: clamped to 180d
    t.dir("long/sub")                                     # inherited below
    t.dir("bad", user__tierfs__inactive_for="soon")       # unparsable: the rule's value applies
    for d in ("short", "tiny", "long/sub", "bad", "plain"):
        for days in (25, 40, 100, 200):
            t.file(f"{d}/f{days}", idle=days)
    rule = dict(name="r", action="archive", inactive_for="90d", allow_user_override=True,
                min_override="30d", max_override="180d")
    report = run(catalog, make_cfg(tmp_path, rule))
    assert paths(report) == {"/short/f40", "/short/f100", "/short/f200", "/tiny/f40", "/tiny/f100", "/tiny/f200",
                             "/long/sub/f200", "/bad/f100", "/bad/f200", "/plain/f100", "/plain/f200"}
    why = {a.path: a.reasons[0] for a in report.actions}
    since = {n: f"not accessed or modified for {n}d (since {day(t.now - n * DAY_NS)})" for n in (40, 100, 200)}
    assert why["/short/f40"] == f"{since[40]} > 30d (user.tierfs.inactive_for on /short)"
    assert why["/long/sub/f200"] == f"{since[200]} > 180d (user.tierfs.inactive_for on /long)"
    assert why["/plain/f100"] == f"{since[100]} > 90d"
    # Without allow_user_override the attribute means nothing.
    rule.pop("min_override"), rule.pop("max_override")
    rule["allow_user_override"] = False
    report = run(catalog, make_cfg(tmp_path, rule))
    assert paths(report) == {f"/{d}/f{n}" for d in ("short", "tiny", "long/sub", "bad", "plain") for n in (100, 200)}


def test_inactivity_counts_from_the_last_access_or_modification(catalog, tmp_path):
    """A log appended to a minute ago but not read for 200 days is in use:
    inactivity counts from the later of atime and mtime, in the indexed
    query (only the inactive are candidates), the explanation (its date is
    the later of the two) and the per-directory overrides."""
    t = Tree(catalog)
    t.file("logs/app.log", 2 * MB, idle=200, modified=1 / 1440)   # written a minute ago
    t.file("logs/old.log", 2 * MB, idle=200)                        # neither, for 200 days
    t.file("logs/read.log", 2 * MB, idle=1, modified=200)           # read yesterday
    t.file("logs/half.log", 2 * MB, idle=300, modified=120)         # read 300, written 120 days ago
    t.dir("short", user__tierfs__inactive_for="60d")
    t.file("short/written", idle=100, modified=45)     # read 100, written 45 days ago: not for 60 days
    t.file("short/idle", idle=100, modified=70)
    rule = dict(name="cold", action="archive", inactive_for="90d", allow_user_override=True, min_override="30d")
    report = run(catalog, make_cfg(tmp_path, rule))
    assert paths(report) == {"/logs/old.log", "/logs/half.log", "/short/idle"}
    assert report.rules[0].candidates == 4       # those three and short/written (the query's bound: 30d)
    assert report.rules[0].skipped == {"override": 1}
    why = {a.path: a.reasons[0] for a in report.actions}
    assert why["/logs/half.log"] == f"not accessed or modified for 120d (since {day(t.now - 120 * DAY_NS)}) > 90d"
    assert why["/short/idle"] == (f"not accessed or modified for 70d (since {day(t.now - 70 * DAY_NS)}) > 60d "
                                  "(user.tierfs.inactive_for on /short)")
    assert {a.path: a.last_access_ns for a in report.actions}["/logs/half.log"] == t.now - 120 * DAY_NS


def test_watermark_runs_take_the_least_recently_used_counting_writes(catalog, tmp_path):
    t = Tree(catalog)
    t.file("written", 10 * MB, idle=100, modified=1)    # least recently read, but written yesterday
    t.file("f50", 10 * MB, idle=50)
    t.file("f10", 10 * MB, idle=10)
    engine = Engine(catalog, parse_rules(make_cfg(tmp_path, dict(name="arch", action="archive"))),
                    clock=FakeClock(), page=2)
    report = trio.run(functools.partial(engine.run_watermark, "disk", 15 * MB, dry_run=True))
    assert [a.path for a in report.actions] == ["/f50", "/f10"]


def test_dry_run_equals_the_real_run(tree, catalog, tmp_path):
    cfg = make_cfg(tmp_path, dict(name="cold", action="archive", inactive_for="90d", min_size="1MB"),
                   dict(name="dual", action="release", inactive_for="30d"))
    tree.file("dual.raw", 4 * MB, idle=60, state=State.DUAL)
    clock = FakeClock()
    dry = run(catalog, cfg, clock=clock)
    real = run(catalog, cfg, dry_run=False, clock=clock)
    assert [a.key() for a in dry.actions] == [a.key() for a in real.actions]
    assert [a.reasons for a in dry.actions] == [a.reasons for a in real.actions]
    assert {a.done for a in real.actions} == {"queued"}
    jobs = {j.ino: j for j in catalog.jobs([JobState.PENDING])}
    assert len(jobs) == len(real.actions) == 5
    for a in real.actions:
        j = jobs[a.ino]
        assert j.kind == (JobKind.RELEASE if a.rule == "dual" else JobKind.ARCHIVE)
        assert j.cause == a.cause and j.target_tier == a.target
    # Files with queued jobs are not candidates again: a second run does nothing.
    again = run(catalog, cfg, dry_run=False, clock=clock)
    assert again.actions == [] and again.rules[0].skipped["queued"] == 4


def test_limits_per_run(catalog, tmp_path):
    t = Tree(catalog)
    for i in range(10):
        t.file(f"f{i}", size=(i + 1) * MB, idle=100)
    report = run(catalog, make_cfg(tmp_path, dict(name="a", action="archive", max_files=4)), page=3)
    assert [a.size for a in report.actions] == [1 * MB, 2 * MB, 3 * MB, 4 * MB]
    assert report.rules[0].stopped == "max_files 4 reached"
    report = run(catalog, make_cfg(tmp_path, dict(name="a", action="archive", max_bytes="10MB")), page=3)
    assert [a.size for a in report.actions] == [1 * MB, 2 * MB, 3 * MB, 4 * MB]
    assert report.rules[0].stopped == "max_bytes 10MB reached"


def test_paging_reads_each_candidate_once(catalog, tmp_path):
    t = Tree(catalog)
    for i in range(23):
        t.file(f"d{i % 3}/f{i}", idle=100)
    catalog.rows_read = 0
    report = run(catalog, make_cfg(tmp_path, dict(name="a", action="archive")), page=5)
    assert len(report.actions) == 23 and len({a.ino for a in report.actions}) == 23
    assert catalog.rows_read == 23


def test_rate_paces_moves_on_the_clock(catalog, tmp_path):
    t = Tree(catalog)
    for i in range(11):
        t.file(f"f{i}", idle=100)
    clock = FakeClock()
    started = time.monotonic()
    report = run(catalog, make_cfg(tmp_path, dict(name="a", action="archive", rate=5)), dry_run=False, clock=clock)
    assert len(report.actions) == 11
    assert clock.slept == pytest.approx(2.0, abs=0.01)   # 1 at once, then 10 more at 5 per second
    assert time.monotonic() - started < 2.0              # accelerated: no real sleeping
    dry_clock = FakeClock()
    run(catalog, make_cfg(tmp_path, dict(name="b", action="release", rate=5)), clock=dry_clock)
    assert dry_clock.slept == 0


def test_release_migrate_and_their_states(catalog, tmp_path):
    t = Tree(catalog)
    t.file("online", idle=100)
    t.file("dual", idle=100, state=State.DUAL)
    t.file("archived", idle=100, state=State.ARCHIVED)
    t.file("on_ssd", idle=100, tier="ssd")
    cfg = make_cfg(tmp_path, dict(name="rel", action="release"), dict(name="mig", action="migrate", to="ssd"),
                   dict(name="keep", action="archive", keep_online=True))
    report = run(catalog, cfg)
    by_rule = {r: sorted(a.path for a in report.actions if a.rule == r) for r in ("rel", "mig", "keep")}
    assert by_rule == {"rel": ["/dual"], "mig": ["/dual", "/online"], "keep": ["/on_ssd", "/online"]}
    assert report.rules[1].skipped["already there"] == 1
    assert {a.path: a.freed for a in report.actions if a.rule != "rel"} == {"/dual": 0, "/online": 0, "/on_ssd": 0}


def test_delete_buries_the_file_and_keeps_a_tombstone(catalog, tmp_path):
    t = Tree(catalog)
    t.file("old/report.pdf", 2 * MB, created=800, state=State.ARCHIVED)
    t.file("old/young.pdf", 2 * MB, created=10)
    t.file("old/pinned.pdf", 2 * MB, created=800, user__tierfs__pin=1)
    catalog.enqueue(t.inos["old/report.pdf"], JobKind.RESTORE, cause="someone")
    cfg = make_cfg(tmp_path, dict(name="retention", action="delete", older_than="2y", confirm_delete=True))
    dry = run(catalog, cfg)
    assert paths(dry) == set()  # a queued job keeps the file out of this run
    catalog.cancel_jobs(kind=JobKind.RESTORE)
    dry = run(catalog, cfg)
    assert paths(dry) == {"/old/report.pdf"} and dry.totals()["freed"] == 0  # its bytes were offline anyway
    real = run(catalog, cfg, dry_run=False, executor=JobExecutor(catalog, who="test by uid 0"))
    assert [a.done for a in real.actions] == ["deleted"]
    ino = t.inos["old/report.pdf"]
    with pytest.raises(errors.NotFound):
        catalog.lookup(t.dirs["old"], b"report.pdf")
    tomb, = catalog.tombstones(ino=ino)
    assert tomb.path == b"old/report.pdf" and tomb.who == "policy rule 'retention' (test by uid 0)"
    assert tomb.why == "created 800d ago > 2y" and tomb.state == "archived"
    # No mount is running, so the bytes went to garbage at once.
    with pytest.raises(errors.NotFound):
        catalog.get(ino)
    assert [(g.tier, g.key) for g in catalog.garbage()] == [("vault", "arc-report.pdf")]
    assert {e.name for e in catalog.readdir(t.dirs["old"], 0, 10)} == {b"young.pdf", b"pinned.pdf"}


def test_delete_of_a_changed_file_is_skipped(catalog, tmp_path):
    t = Tree(catalog)
    f = t.file("a", created=800)
    cfg = make_cfg(tmp_path, dict(name="retention", action="delete", older_than="1y", confirm_delete=True))
    rules = parse_rules(cfg)

    class Racing(JobExecutor):
        async def apply(self, a):
            catalog.bump_version(f.ino, {})   # written between the decision and the deletion
            return await super().apply(a)
    engine = Engine(catalog, rules, clock=FakeClock(), executor=Racing(catalog))
    report = trio.run(functools.partial(engine.run, None, dry_run=False))
    assert [a.done for a in report.actions] == ["changed"]
    assert catalog.lookup(ROOT_INO, b"a").ino == f.ino


def test_watermark_run_frees_least_recently_used_first(catalog, tmp_path):
    t = Tree(catalog)
    for i, idle in enumerate([5, 50, 1, 30, 80, 10]):
        t.file(f"f{i}", 10 * MB, idle=idle)
    t.file("ssd", 10 * MB, idle=500, tier="ssd")                      # another tier
    t.file("pinned", 10 * MB, idle=400, user__tierfs__pin=1)
    t.file("dual", 10 * MB, idle=60, state=State.DUAL)
    cfg = make_cfg(tmp_path, dict(name="arch", action="archive"), dict(name="rel", action="release"),
                   dict(name="no", action="archive", watermark=False))
    engine = Engine(catalog, parse_rules(cfg), clock=FakeClock(), page=2)
    report = trio.run(functools.partial(engine.run_watermark, "disk", 35 * MB, dry_run=True))
    # oldest first across both rules; the dual file is taken by the first rule that matches it
    assert [(a.path, a.rule) for a in report.actions] == [("/f4", "arch"), ("/dual", "arch"), ("/f1", "arch"),
                                                          ("/f3", "arch")]
    assert report.rules[0].skipped["pinned"] == 1
    assert [r.rule for r in report.rules] == ["arch", "rel"]


def test_a_run_on_100k_entries_touches_only_the_candidates(sqlite_url, tmp_path):
    """Bulk-inserted synthetic catalog: 100,000 files, 50 of them cold and big."""
    from tierfs.catalog import schema as S
    from tierfs.catalog.sql import SqlCatalog
    ops = [0]

    def count():
        ops[0] += 1
        return 0

    def count_vm_steps(conn):
        conn.set_progress_handler(count, 100)   # one tick per 100 SQLite VM instructions
    catalog = SqlCatalog(sqlite_url, on_connect=count_vm_steps)
    catalog.init()
    now = now_ns()
    old = now - 200 * DAY_NS
    rows, dents = [], []
    for i in range(100_000):
        ino, cold = i + 2, i % 2000 == 0
        # Every 7th file was last read long ago but written now: active, and in the (state, size) range.
        rows.append(dict(ino=ino, mode=0o100644, uid=0, gid=0, nlink=1, size=5 * MB if cold or i % 3 == 0 else 1000,
                         atime_ns=old if cold or i % 7 == 0 else now, mtime_ns=old if cold else now, ctime_ns=now,
                         crtime_ns=now, rdev=0,
                         target=None, state="online", tier="disk", location=f"k{ino}", archive_tier=None,
                         archive_location=None, checksum=None, data_version=0, state_ns=now, state_cause="create"))
        dents.append(dict(parent=ROOT_INO, name=b"f%d" % i, ino=ino))
    cols = [k for k in S.columns("inodes") if k not in S.GENERATED + S.V3_COLUMNS["inodes"]]   # theirs: defaults
    c = catalog.connect()
    with c:
        c.execute("BEGIN")
        c.executemany(f"INSERT INTO inodes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                      [tuple(r[k] for k in cols) for r in rows])
        c.executemany("INSERT INTO dentries (parent, name, ino) VALUES (:parent, :name, :ino)", dents)
    del rows, dents
    cfg = make_cfg(tmp_path, dict(name="cold", action="archive", inactive_for="90d", min_size="1MB"))
    catalog.rows_read = 0
    ops[0] = 0
    report = run(catalog, cfg, dry_run=False, page=20)
    assert len(report.actions) == 50 and catalog.rows_read == 50
    run_ops = ops[0]
    ops[0] = 0
    with c:
        assert c.execute("SELECT count(*) FROM inodes WHERE size >= 0").fetchone()[0] == 100_001
    c.close()
    full_scan = ops[0]
    print(f"VM steps/100: policy run {run_ops}, one full scan {full_scan}")
    assert run_ops * 20 < full_scan, (run_ops, full_scan)
    # A watermark run (least recently accessed first, on one tier) is as cheap.
    assert catalog.cancel_jobs(kind=JobKind.ARCHIVE) == 50
    ops[0] = catalog.rows_read = 0
    engine = Engine(catalog, parse_rules(make_cfg(tmp_path, dict(name="any", action="release"),
                                                  dict(name="cold", action="archive", min_size="1MB"))),
                    clock=FakeClock(), page=20)
    report = trio.run(functools.partial(engine.run_watermark, "disk", 12 * 5 * MB, dry_run=True))
    assert len(report.actions) == 12 and {a.rule for a in report.actions} == {"cold"}
    print(f"VM steps/100: watermark run {ops[0]}, rows read {catalog.rows_read}")
    assert ops[0] * 20 < full_scan and catalog.rows_read <= 2 * 20
    catalog.close()


def test_files_queued_meanwhile_are_counted_apart_from_those_acted_on(tree, catalog, tmp_path):
    """A request queued for a file after the rule chose it, before its job was queued (a user's
    `tierfs archive`, another mount's run): the run did not act on it; it says so apart ("already
    queued"), in the rule's stats, the totals, the summary and the JSON."""
    cfg = make_cfg(tmp_path, dict(name="big", action="archive", to="vault", min_size="40MB"))
    for name in ("a", "b", "c"):
        tree.file(name, 50 * MB)   # (the tree fixture's files are smaller)
    rival = {tree.inos["a"], tree.inos["c"]}

    async def cat(fn, *args):
        target = getattr(fn, "args", (None,))[0]   # JobExecutor.apply: partial(catalog.enqueue, ino, ...)
        if getattr(fn, "func", None) == catalog.enqueue and target in rival:
            catalog.enqueue(target, JobKind.ARCHIVE, target_tier="vault", cause="command archive by uid 1000")
        return fn(*args)
    rules = parse_rules(cfg)
    engine = Engine(catalog, rules, cat=cat, clock=FakeClock(), executor=JobExecutor(catalog, cat))
    report = trio.run(functools.partial(engine.run, None, dry_run=False))
    st = report.rules[0]
    assert (st.candidates, st.actions, st.already_queued, st.bytes) == (3, 1, 2, 50 * MB)
    assert sorted(a.done for a in report.actions) == ["already queued", "already queued", "queued"]
    assert report.summary() == "acted on 1 file(s), 50MB, freeing 50MB online (3 candidate(s) read, 2 already queued)"
    d = report.to_dict()
    assert (d["totals"]["files"], d["totals"]["already_queued"], d["rules"][0]["already_queued"]) == (1, 2, 2)
    assert len(catalog.jobs([JobState.PENDING])) == 3


# ---- the catalog going away during a run ----------------------------------------------------------
LOST = errors.CatalogUnavailable("catalog mongodb://db1/lab: connection refused")


def failing_query(catalog, monkeypatch, after: int, calls=(1,), method: str = "candidates"):
    """catalog.candidates (a rule's candidates; `query` for a watermark run's) whose results, for the
    calls numbered in `calls`, raise LOST after `after` rows."""
    real, n = getattr(catalog, method), [0]

    def candidates(q):
        n[0] += 1
        rows = real(q)
        if n[0] not in calls:
            return rows

        def cut():
            for k, inode in enumerate(rows):
                if k == after:
                    raise LOST
                yield inode
        return cut()
    monkeypatch.setattr(catalog, method, candidates)


def test_a_catalog_error_stops_that_rule_and_the_run_goes_on(catalog, tmp_path, monkeypatch, caplog):
    """Reading a rule's candidates fails after its first page: that rule stops, naming the error (its
    actions so far stand), and the next rule runs in full; the run's log has one warning naming it."""
    t = Tree(catalog)
    for i in range(7):
        t.file(f"f{i}", idle=100)
    failing_query(catalog, monkeypatch, after=3)
    cfg = make_cfg(tmp_path, dict(name="a", action="archive"), dict(name="b", action="migrate", to="ssd"))
    report = run(catalog, cfg, page=3)
    a, b = report.rules
    assert (a.candidates, a.actions, a.error, a.stopped) == (3, 3, str(LOST), str(LOST))
    assert (b.candidates, b.actions, b.error, b.stopped) == (7, 7, "", "")
    assert report.to_dict()["rules"][0]["error"] == str(LOST)
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "policy rule 'a'" in r.getMessage()]
    assert len(warned) == 1 and "stopped: catalog mongodb://db1/lab: connection refused" in warned[0].getMessage()


def test_a_catalog_error_while_queueing_counts_only_the_jobs_queued(catalog, tmp_path, monkeypatch):
    t = Tree(catalog)
    for i in range(5):
        t.file(f"f{i}", idle=100)
    real, n = catalog.enqueue, [0]

    def enqueue(*args, **kwargs):
        n[0] += 1
        if n[0] == 3:
            raise LOST
        return real(*args, **kwargs)
    monkeypatch.setattr(catalog, "enqueue", enqueue)
    cfg = make_cfg(tmp_path, dict(name="a", action="archive"), dict(name="b", action="migrate", to="ssd"))
    report = run(catalog, cfg, dry_run=False)
    a, b = report.rules
    assert (a.actions, dict(a.applied), a.error) == (2, {"queued": 2}, str(LOST))
    assert [x.done for x in report.actions if x.rule == "a"] == ["queued", "queued"]
    assert (b.actions, dict(b.applied), dict(b.skipped), b.error) == (3, {"queued": 3}, {"queued": 2}, "")
    assert len(catalog.jobs([JobState.PENDING])) == 5


def test_a_catalog_error_in_a_watermark_run_stops_only_that_rule(catalog, tmp_path, monkeypatch):
    t = Tree(catalog)
    for i, idle in enumerate([5, 50, 1, 30]):
        t.file(f"f{i}", 10 * MB, idle=idle)
    cfg = make_cfg(tmp_path, dict(name="arch", action="archive"), dict(name="arch2", action="archive"))
    failing_query(catalog, monkeypatch, after=0, calls=(1,), method="query")   # arch's first query
    engine = Engine(catalog, parse_rules(cfg), clock=FakeClock(), page=2)
    report = trio.run(functools.partial(engine.run_watermark, "disk", 25 * MB, dry_run=True))
    arch, arch2 = report.rules
    assert arch.error == str(LOST) and arch.actions == 0
    assert [(a.path, a.rule) for a in report.actions] == [("/f1", "arch2"), ("/f3", "arch2"), ("/f0", "arch2")]


def test_a_page_of_candidates_is_looked_at_in_one_worker_thread_call(catalog, tmp_path):
    """A rule's candidates are looked at (path, pins, overrides, queued jobs) a page at a time in one
    worker-thread call: the thread hop, not the catalog's indexed reads, was a dry run's cost (10M
    entries, 100,000 candidates: 17.9 s warm with one hop per candidate)."""
    t = Tree(catalog)
    for i in range(40):
        t.file(f"d{i % 3}/f{i}", idle=100)
    calls = [0]

    async def counting(fn, *args):
        calls[0] += 1
        return await trio.to_thread.run_sync(functools.partial(fn, *args))
    engine = Engine(catalog, parse_rules(make_cfg(tmp_path, dict(name="a", action="archive"))), cat=counting,
                    clock=FakeClock(), page=10)
    report = trio.run(functools.partial(engine.run, None, dry_run=True))
    assert report.rules[0].actions == 40 and len(paths(report)) == 40
    assert calls[0] <= 4 * 3 + 3, calls   # per page of 10: its candidates, their facts (and a close, a spare)


def test_the_facts_of_a_page_are_those_of_each_file_read_alone(catalog):
    """Lookups._facts_page reads a page's facts in bulk (names, directory paths, attributes, queued
    jobs); each must equal what _facts reads for the file alone: files in the root and deep down, a
    hard link, pins and overrides on files and directories, a queued job, a path the rule excludes, a
    file with no name left."""
    from tierfs.policy.conditions import Lookups
    t = Tree(catalog)
    t.dir("p", user__tierfs__pin="1")
    t.dir("o/q", user__tierfs__inactive_for="5d")
    files = [t.file("top", idle=100), t.file("p/a", idle=100), t.file("o/q/r/deep", idle=100),
             t.file("o/own", idle=100, user__tierfs__pin="1", user__other="x"),
             t.file("skip/me.tmp", idle=100), t.file("o/queued", idle=100), t.file("gone", idle=100)]
    catalog.link(files[1].ino, t.dir("o"), b"second-name", now_ns())
    catalog.enqueue(files[5].ino, JobKind.ARCHIVE, target_tier="vault")
    catalog.unlink(ROOT_INO, b"gone", now_ns())
    check = lambda path: "excluded" if path.endswith(".tmp") else None   # noqa: E731
    lk = Lookups(None, catalog, [])
    inos = [f.ino for f in files] + [987654]
    alone = {ino: Lookups(None, catalog, [])._facts(ino, check) for ino in inos}
    assert lk._facts_page(inos, check) == alone
    assert alone[files[6].ino] is None and alone[987654] is None and alone[files[4].ino].skip == "excluded"
    assert alone[files[5].ino].queued and alone[files[3].ino].own == {b"user.tierfs.pin": b"1"}
    assert alone[files[2].ino].dir.inherited(b"user.tierfs.inactive_for") == (b"5d", "/o/q")


def test_a_page_of_candidates_is_looked_at_with_a_few_catalog_reads(catalog, tmp_path, monkeypatch):
    """Not the five or more per candidate of reading each alone (path per level, parent, attributes,
    jobs), nor two or three per directory: on MongoDB each is a round trip (1M entries, 10,000
    candidates, MongoDB 2 ms away: a dry run took 301 s)."""
    t = Tree(catalog)
    for i in range(40):
        t.file(f"d{i % 3}/e/f{i}", idle=100)
    per_file = {"path_of": 0, "parent_of": 0, "listxattr": 0, "getxattr": 0, "jobs": 0}
    for name in per_file:
        real = getattr(catalog, name)

        def counted(*args, _real=real, _name=name, **kw):
            per_file[_name] += 1
            return _real(*args, **kw)
        monkeypatch.setattr(catalog, name, counted)
    engine = Engine(catalog, parse_rules(make_cfg(tmp_path, dict(name="a", action="archive"))), clock=FakeClock(),
                    page=10)
    report = trio.run(functools.partial(engine.run, None, dry_run=True))
    assert report.rules[0].actions == 40
    assert set(per_file.values()) == {0}, per_file   # (directories' facts too are read in bulk, per level)


@pytest.mark.parametrize("fresh_s, acted", [(3600.0, ["f0", "f1"]), (0.0, ["f0"])])
def test_a_pin_set_after_the_page_was_read_counts_once_the_facts_are_stale(catalog, tmp_path, monkeypatch,
                                                                            fresh_s, acted):
    """Facts read ahead with the page are used only while FRESH_S old: a run whose actions are slow
    (a rate limit) reads them again, so a pin set meanwhile is honoured. The executor pins f1 while
    acting on f0: with stale facts (FRESH_S 0) f1 is skipped as pinned; within FRESH_S it is not."""
    from tierfs.policy import conditions
    monkeypatch.setattr(conditions, "FRESH_S", fresh_s)
    t = Tree(catalog)
    f0, f1 = t.file("f0", idle=100), t.file("f1", idle=100)

    class Pinning(JobExecutor):
        async def apply(self, a):
            if a.ino == f0.ino:
                catalog.setxattr(f1.ino, b"user.tierfs.pin", b"1")
            return await super().apply(a)
    engine = Engine(catalog, parse_rules(make_cfg(tmp_path, dict(name="a", action="archive"))), clock=FakeClock(),
                    executor=Pinning(catalog))
    report = trio.run(functools.partial(engine.run, None, dry_run=False))
    assert sorted(a.path.lstrip("/") for a in report.actions) == acted
    assert report.rules[0].skipped.get("pinned", 0) == 2 - len(acted)
