"""Commands that act on files through the mount itself: `tierfs state`,
`archive`, `restore`, `release`, `migrate`, `wait` and `place`.

They need no config and no catalog: requests are setxattr calls of
user.tierfs.request on each file (the daemon sees the caller's uid and
checks its permissions), answers the user.tierfs.* attributes the daemon
serves (tierfs/client.py).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import stat
import sys
import time

import click

from .. import client, errors, pins, xattrs
from ..client import CliError
from ..display import echo, name_fields, printable
from ..units import fmt_size
from .common import CONTEXT, fail, with_options

# ---- state ------------------------------------------------------------------
def _ts(ns: int | None) -> str:
    if not ns:
        return "-"
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


@click.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-r", "--recursive", is_flag=True, help="Every file under directories.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file (a JSON list).")
@click.option("-v", "--verbose", is_flag=True, help="Also the history and queued jobs of every file.")
def state(paths, recursive, as_json, verbose):
    """Show where each file's bytes are: state, tier, size, last access, pin.

    Archived files also say when, by what and to where they were archived,
    and whether a restore is queued. A directory shows its entry count, the
    tier new files in it go to (placement) and its pin; with -r, every
    entry below it too. "pinned (from /a)": a pin set on directory /a
    (relative to the mount) keeps policies away from it.

    "accessed" is the mount's current value; `tierfs find --inactive` and
    `tierfs ls` read the catalog, which the mount updates every atime_flush
    (60 s by default), so they may lag behind it by that much.

    All of this comes from one attribute, the documented way to ask
    without tierfs's CLI: `getfattr -n user.tierfs.info FILE` (JSON).
    `getfattr -d` lists no user.tierfs.* attribute, on purpose (so cp -a
    and rsync -X do not copy them); name them with -n.

    \b
    Examples:
      tierfs state ~/tierfs/data.bin
      tierfs state -r --json ~/tierfs/project
      getfattr --only-values -n user.tierfs.info ~/tierfs/data.bin | jq .state
    """
    rows = []
    for p in paths:
        client.check_in_mount(p)
    tree = client.walk(paths, recursive, files_only=False)
    for path in tree:
        try:
            inf = client.info(path)
            mode = os.lstat(path).st_mode
            inf = _directory(path, inf) if stat.S_ISDIR(mode) else dict(inf, type=client.kind_of(mode))
        except OSError as e:
            raise client.os_error(path, e) from None
        inf.update(name_fields("path", path))
        if as_json:
            rows.append(inf)
        elif inf["type"] == "directory":
            _print_directory(inf)
        elif inf["type"] != "file":
            echo(f"{inf['path']}  {inf['type']}{_pin(inf)}")
        else:
            _print_state(inf, verbose)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    elif verbose:
        echo("(getfattr -d lists no user.tierfs.* attribute; `getfattr -n user.tierfs.info FILE` gives this as JSON)")
    for err in tree.errors:
        echo(f"tierfs: {err}", err=True)
    if tree.errors:
        sys.exit(tree.errors[0].code)


#: What user.tierfs.info says of a directory that describes a file's bytes (a directory has none).
_BYTES_FIELDS = ("state", "tier", "location", "archive_tier", "archive_location", "checksum", "data_version",
                 "size", "stub_size", "copies", "origin_tier", "origin_location", "state_ns", "state_cause")


def _directory(path: str, inf: dict) -> dict:
    """A directory's info: its entries and placement instead of the file fields."""
    d = {k: v for k, v in inf.items() if k not in _BYTES_FIELDS}
    d["type"] = "directory"
    with os.scandir(path) as it:
        d["entries"] = sum(1 for _ in it)
    try:
        placement, _, source = os.getxattr(path, xattrs.text(xattrs.EFFECTIVE_PLACEMENT)).decode().partition(" ")
        d.update(placement=placement, placement_from=source)
    except OSError:   # a mount without xattrs
        d.update(placement=None, placement_from=None)
    return d


def _pin(inf: dict) -> str:
    """"  pinned", "  pinned (from /a)" when a directory above pins it, or nothing."""
    text = pins.Pin.of(inf).text()
    return "  " + text if text else ""


def _print_directory(inf: dict) -> None:
    n = inf["entries"]
    where = f"  placement {inf['placement']} (from {inf['placement_from']})" if inf.get("placement") else ""
    echo(f"{inf['path']}  directory  {n} entr{'y' if n == 1 else 'ies'}{where}{_pin(inf)}")


def _print_state(inf: dict, verbose: bool) -> None:
    tier = inf.get("tier") or inf.get("archive_tier") or "-"
    echo(f"{inf['path']}  {inf['state']}  {tier}  {fmt_size(inf.get('size', 0))}  "
         f"accessed {_ts(inf.get('atime_ns'))}{_pin(inf)}")
    st = inf["state"]
    if st in ("archived", "dual", "restoring", "lost", "archiving") or verbose:
        for t, k in inf.get("copies") or ([[inf["archive_tier"], inf.get("archive_location")]]
                                          if inf.get("archive_tier") else []):
            echo(f"    archive copy: {t}/{k}  sha256 {(inf.get('checksum') or '-')[:16]}")
        if inf.get("stub_size"):
            echo(f"    stub: first {inf['stub_size']} bytes online (reads within them need no restore)")
        echo(f"    {st} since {_ts(inf.get('state_ns'))} by {inf.get('state_cause') or '-'}")
        if inf.get("origin_location"):
            echo(f"    in-place original released from {inf['origin_tier']}/{printable(inf['origin_location'])} "
                 "(a restore puts it back there)")
        active = [j for j in inf.get("jobs", []) if j["state"] in ("pending", "running")]
        for j in active:
            err = f", last error: {j['last_error']}" if j.get("last_error") else ""
            echo(f"    {j['kind']} {j['state']} (job {j['id']}, attempts {j['attempts']}{err})")
        if st == "archived" and not any(j["kind"] == "restore" for j in active):
            echo("    no restore queued (`tierfs restore` or open it to restore)")
    if verbose:
        for e in inf.get("events", []):
            echo(f"    {_ts(e['time_ns'])} {e['from_state']} -> {e['to_state']}: {e['cause']} {e['detail']}")


# ---- requests ---------------------------------------------------------------
def _request(verb: str, paths, recursive: bool, wait: bool, timeout: float, opts: dict) -> None:
    """Send `verb` for every regular file named (or under a directory, with -r).

    Exit status: the first refusal's code; 1 when nothing was requested
    because every path named was not a regular file; with --wait, 1 when a
    job failed or was cancelled and 8 on timeout."""
    t0 = time.monotonic()
    mountpoints = {client.check_in_mount(p).mountpoint for p in paths}
    for mp in mountpoints if opts.get("to") else ():
        for name in _values(opts["to"]):
            _check_tier_option(verb, name, mp)
    tree = client.walk(paths, recursive)
    words = [verb] + [k if v is True else f"{k}={x}" for k, v in opts.items() if v for x in _values(v)]
    value = " ".join(words)
    total = requested = 0
    refused: list[CliError] = []
    sent: list[tuple[str, dict]] = []   # with --wait: (file, its jobs of this kind before the request)
    for f in tree:
        try:
            before = {"jobs": [j for j in client.info(f)["jobs"] if j["kind"] == verb]} if wait else None
            try:
                client.request(f, value)
            except PermissionError:
                if verb != "restore":
                    raise
                client.restore_by_open(f)  # the kernel lets only writers set user.* xattrs
            total += os.lstat(f).st_size
            if wait:
                sent.append((f, before))
            requested += 1
        except OSError as e:
            err = client.os_error(f, e, verb)
            if e.errno == errno.EINVAL:
                err = CliError(f"{printable(f)}: {verb}: {_why_invalid(verb, f, opts)}", client.EXIT_FAILED)
            echo(f"tierfs: {err}", err=True)
            refused.append(err)
    refused += tree.errors
    for err in tree.errors:
        echo(f"tierfs: {err}", err=True)
    named = set(paths)
    for path, what in tree.skipped:
        if path in named:
            echo(f"tierfs: {path}: {verb}: a {what}, not a regular file: skipped", err=True)
    skipped = f"; skipped {len(tree.skipped)} non-regular file(s) (symlinks, FIFOs, devices...)" \
        if tree.skipped else ""
    echo(f"{verb}: {requested} file(s), {fmt_size(total)} requested"
         + (f", {len(refused)} refused" if refused else "") + skipped)
    if wait and sent:
        _wait(verb, sent, timeout, t0)
    if refused:
        sys.exit(refused[0].code)
    if tree.skipped and not requested:
        sys.exit(client.EXIT_FAILED)


def _values(v) -> tuple:
    """An option's values: `--to` of archive may be given several times (a tuple)."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _check_tier_option(verb: str, name: str, mountpoint: str) -> None:
    """--to names a tier of the mount with the role `verb` needs (one message
    instead of an EINVAL per file). The daemon checks again; a mount without
    xattrs cannot be asked, and is left to it."""
    tiers = _tiers_of(mountpoint)
    if tiers is None:
        return
    kinds = {n: t.get("kind") for n, t in tiers.items()}
    if verb == "archive" and tiers.get(name, {}).get("archives_in_place"):
        return   # an online tier archiving its own files in place: the daemon checks each file is on it
    from ..tiers import tier_class
    archive = verb == "archive"
    if name not in kinds:
        raise CliError(f"--to {printable(name)}: no tier of that name on this mount (tiers: {', '.join(kinds)})",
                       client.EXIT_USAGE)
    try:
        is_archive = tier_class(kinds[name]).archive
    except errors.ConfigError:
        return
    if is_archive != archive:
        role = "an archive" if is_archive else "an online"
        raise CliError(f"--to {name}: is {role} tier; {verb} needs {'an archive' if archive else 'an online'} tier",
                       client.EXIT_USAGE)


#: Why the daemon refused a request with EINVAL (its reason does not travel through the errno), by the file's state.
_INVALID = {
    ("release", "online"): "is online, not dual: archive it first (or archive --keep-online)",
    ("release", "archiving"): "is being archived, not dual yet: release it once the archive is done",
    ("release", "lost"): "is lost (its archive copy is missing or corrupt): nothing to release",
    ("migrate", "archived"): "is archived: restore it before migrating",
    ("migrate", "restoring"): "is being restored: migrate it once it is online",
    ("migrate", "lost"): "is lost (its archive copy is missing or corrupt)",
}


def _kept_original(path: str) -> str:
    """Why the daemon refused to release a dual file: its online copy is a file imported in place on a
    tier without release_originals (moves.kept_original, the only EINVAL of a dual file's release)."""
    try:
        inf = client.info(path)
    except OSError:
        inf = {}
    tier, where = inf.get("tier") or "?", inf.get("location") or "?"
    return (f"its online copy is the original {printable(where)} imported in place on tier {tier}, which keeps "
            f"originals: set release_originals = true in [tiers.{tier}] to let release delete them once their "
            "archive copy is verified")


def _why_invalid(verb: str, path: str, opts: dict) -> str:
    try:
        st = client.state(path)
    except OSError:
        return os.strerror(errno.EINVAL)
    if (verb, st) in _INVALID:
        return _INVALID[verb, st]
    in_place = [t for t in _values(opts.get("to")) if t and _archives_in_place(path, t)] if verb == "archive" else []
    if in_place and len(_values(opts["to"])) > 1:
        return f"tier {in_place[0]} archives in place: it cannot be one of several --to tiers"
    if in_place:
        to = in_place[0]
        if opts.get("keep_online"):
            return f"tier {to} archives in place (the object itself changes storage class): --keep-online " \
                   "cannot keep an online copy"
        inf = client.info(path)
        return (f"tier {to} archives in place (archive_storage_class): it archives only files stored on it, "
                f"and this file is on {inf.get('tier') or inf.get('archive_tier')}; migrate it to {to} "
                "first, or archive it to an archive tier")
    if (verb, st) == ("release", "dual"):
        return _kept_original(path)
    if verb == "archive":
        return "refused: this mount has no archive tier to send it to (see its config, or give --to)"
    return f"refused for a file that is {st} (Invalid argument; the mount's log says why)"


def _tiers_of(mountpoint: str) -> dict | None:
    """The mount's tiers as its daemon reports them (name -> kind, archives_in_place...); None when it
    cannot be asked (no xattrs)."""
    try:
        return json.loads(os.getxattr(mountpoint, xattrs.text(xattrs.STATS)))["tiers"]
    except (OSError, ValueError, KeyError):
        return None


def _archives_in_place(path: str, tier: str) -> bool:
    """`tier`, on the mount of `path`, archives its own files in place (archive_storage_class)."""
    tiers = _tiers_of(client.check_in_mount(path).mountpoint) or {}
    return bool(tiers.get(tier, {}).get("archives_in_place"))


#: past tense and "nothing to do" of each verb --wait waits for: `restored 200 files, 1.2GB in 14.3s (3 already online)`
_DONE = {"archive": ("archived", "already archived"), "restore": ("restored", "already online"),
         "migrate": ("migrated", "already there")}


def _poll(verb: str, files: list[str], look, timeout: float, t0: float) -> None:
    """Look at each file until `look(path, info)` says how it ended, then
    print each failure with its error and one completion line; exit 1 when
    one failed, 8 when some had not ended after `timeout` seconds.

    look -> None: not yet; ("done", bytes); ("needless", 0): nothing to do;
    ("failed", what happened: "restore failed: ...")."""
    pending = list(files)
    done = needless = nbytes = 0
    failed: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    pause = 0.05
    with click.progressbar(length=len(files), label=f"waiting for {verb}", file=sys.stderr,
                           show_pos=True, hidden=not sys.stderr.isatty()) as bar:
        while pending and time.monotonic() < deadline:
            for f in list(pending):
                try:
                    outcome = look(f, client.info(f))
                except OSError as e:
                    outcome = ("failed", f"{verb}: {os.strerror(e.errno)} while waiting (deleted or renamed?)")
                if outcome is None:
                    continue
                what, value = outcome
                if what == "done":
                    done += 1
                    nbytes += value
                elif what == "needless":
                    needless += 1
                else:
                    failed.append((f, value))
                pending.remove(f)
                bar.update(1)
            if pending:
                time.sleep(pause)
                pause = min(pause * 1.5, 1.0)   # 1,000 files: at most one info read per file per second
    for f, err in failed:
        echo(f"tierfs: {f}: {err}", err=True)
    past, already = _DONE[verb]
    echo(f"{past} {done} file{'s' if done != 1 else ''}, {fmt_size(nbytes)} in {time.monotonic() - t0:.1f}s"
         + (f" ({needless} {already})" if needless else "") + (f"; {len(failed)} failed" if failed else "")
         + (f"; {len(pending)} not finished" if pending else ""))
    if pending:
        fail(f"{len(pending)} file(s) not done after {timeout:.0f}s (still queued; see `tierfs state`)",
             client.EXIT_TIMEOUT)
    if failed:
        sys.exit(client.EXIT_FAILED)


def _wait(verb: str, sent: list[tuple[str, dict]], timeout: float, t0: float) -> None:
    """Wait until the job behind each request has finished (done, failed or
    cancelled), whatever state the file is in by then (a reader may have
    restored a file archived meanwhile); report failures and a summary.
    `sent`: (file, its info's jobs of this kind before the request); the
    job is identified at the first look after it (client.job_for_request)."""
    before = dict(sent)
    job_ids: dict[str, int | None] = {}

    def look(f: str, inf: dict):
        if f not in job_ids:
            job_ids[f] = client.job_for_request(before[f], inf, verb)
        jid = job_ids[f]
        if jid is None:
            return "needless", 0
        job = client.job_of(inf, jid)
        if job is None or job["state"] == "done":   # None: 20 newer jobs since: long finished
            return "done", inf.get("size", 0)
        if job["state"] in client.JOB_FINISHED:
            return "failed", f"{verb} failed: {job.get('last_error') or job['state']}"
        return None
    _poll(verb, [f for f, _ in sent], look, timeout, t0)


_wait_opts = [
    click.option("-r", "--recursive", is_flag=True, help="Every file under directories."),
    click.option("--wait", "-w", is_flag=True, help="Wait (with a progress bar) until done."),
    click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits."),
]


@click.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@with_options(_wait_opts)
@click.option("--keep-online", is_flag=True, help="Keep the online copy too (the file becomes dual).")
@click.option("--to", "to", metavar="TIER", multiple=True,
              help="Archive tier, or the file's own s3 tier when it has archive_storage_class (default: that, "
              "for a file on such a tier; else default_archive). Several: a verified copy on each.")
def archive(paths, recursive, wait, timeout, keep_online, to):
    """Queue files for archiving (their bytes move to an archive tier).

    With --to given twice or more, the file is archived only once a
    verified copy is on every one of those tiers; a restore reads the
    first copy that is available and good.

    \b
    Examples:
      tierfs archive --wait ~/tierfs/big.raw
      tierfs archive -r --keep-online --to vault ~/tierfs/project
      tierfs archive --wait --to vault --to glacier ~/tierfs/thesis.tar
    """
    _request("archive", paths, recursive, wait, timeout, {"keep_online": keep_online, "to": to})


@click.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@with_options(_wait_opts)
@click.option("--to", "to", metavar="TIER", help="Online tier to restore to (default: the placement).")
def restore(paths, recursive, wait, timeout, to):
    """Queue restores of archived files (all of a tree with -r, in one batch).

    \b
    Examples:
      tierfs restore --wait ~/tierfs/big.raw
      tierfs restore -r --wait ~/tierfs/dataset
    """
    _request("restore", paths, recursive, wait, timeout, {"to": to})


@click.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-r", "--recursive", is_flag=True, help="Every file under directories.")
def release(paths, recursive):
    """Drop the online copy of dual files (instant; the archive copy stays).

    A file imported in place keeps its original unless its tier has
    release_originals = true: then the original is deleted from the tree once
    the archive copy verifies, and a restore puts it back at the same path.

    \b
    Example:
      tierfs release ~/tierfs/big.raw
    """
    _request("release", paths, recursive, False, 0, {})


@click.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@with_options(_wait_opts)
@click.option("--to", "to", metavar="TIER", required=True, help="Online tier to move the bytes to.")
def migrate(paths, recursive, wait, timeout, to):
    """Move files' bytes to another online tier (paths and inodes stay).

    \b
    Example:
      tierfs migrate -r --wait --to s3 ~/tierfs/old-project
    """
    _request("migrate", paths, recursive, wait, timeout, {"to": to})


@click.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-r", "--recursive", is_flag=True, help="Every file under directories.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait (then exit 8).")
def wait(paths, recursive, timeout):
    """Wait until the restores queued for files are over, whoever queued them.

    Returns when no restore is queued or running for any file named (an
    open, another user's `tierfs restore`, a policy). Exit 0 when every file
    is readable (online or dual), 1 when a restore failed, a file is lost
    or archived with no restore queued, 8 on timeout. Archive jobs are not
    waited for (`tierfs archive --wait` does that).

    \b
    Examples:
      tierfs wait ~/tierfs/big.raw
      tierfs wait -r --timeout 600 ~/tierfs/dataset && echo ready
    """
    t0 = time.monotonic()
    for p in paths:
        client.check_in_mount(p)
    tree = client.walk(paths, recursive)
    files = list(tree)
    for err in tree.errors:
        echo(f"tierfs: {err}", err=True)
    seen: set[str] = set()   # files seen with a restore queued or running: "restored" once readable

    def look(f: str, inf: dict):
        restores = sorted((j for j in inf.get("jobs", []) if j["kind"] == "restore"), key=lambda j: j["id"])
        if any(j["state"] not in client.JOB_FINISHED for j in restores):   # (a restoring file has one)
            seen.add(f)
            return None
        if inf["state"] in ("online", "dual", "archiving"):
            return ("done", inf.get("size", 0)) if f in seen else ("needless", 0)
        if inf["state"] == "lost":
            why = restores[-1].get("last_error") if restores else None
            return "failed", f"is lost ({why or 'its archive copy is missing or corrupt'})"
        if restores and restores[-1]["state"] != "done":
            return "failed", f"restore failed: {restores[-1].get('last_error') or restores[-1]['state']}"
        return "failed", f"is {inf['state']} and no restore is queued (`tierfs restore` it)"
    if files:
        _poll("restore", files, look, timeout, t0)
    if tree.errors:
        sys.exit(tree.errors[0].code)
    if not files:
        fail("no regular file to wait for" + (f" (skipped {len(tree.skipped)} non-regular)" if tree.skipped else ""))


# ---- placement ----------------------------------------------------------------
@click.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path())
@click.argument("tier", required=False)
@click.option("--clear", is_flag=True, help="Remove the directory's own placement (inherit again).")
def place(directory, tier, clear):
    """Show or set the tier new files under DIRECTORY go to.

    Without TIER: print the effective placement and where it comes from.
    With TIER: new files and subdirectories below DIRECTORY go to TIER
    (inherited until another directory overrides it). Existing files stay
    where they are (use `tierfs migrate -r --to TIER DIRECTORY`).

    \b
    Examples:
      tierfs place ~/tierfs/scratch            # -> "disk (from default_tier)"
      tierfs place ~/tierfs/results s3
      tierfs place --clear ~/tierfs/results
    """
    client.check_in_mount(directory)
    try:
        if clear:
            try:
                os.removexattr(directory, xattrs.text(xattrs.PLACEMENT))
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
        elif tier:
            os.setxattr(directory, xattrs.text(xattrs.PLACEMENT), tier.encode())
        value = os.getxattr(directory, xattrs.text(xattrs.EFFECTIVE_PLACEMENT)).decode()
    except OSError as e:
        err = client.os_error(directory, e, "placement")
        if e.errno == errno.EINVAL and tier:
            err = CliError(f"{printable(directory)}: cannot place on {tier!r}: not an online tier of this mount, "
                           "or not a directory", client.EXIT_FAILED)
        raise err from None
    name, _, source = value.partition(" ")
    echo(f"{directory}: {name} (from {source if source != 'default_tier' else 'default_tier'})")



COMMANDS = (state, archive, restore, release, migrate, wait, place)
