"""Turning raw run times into the table, the target verdicts and RESULTS.md.

Every ratio is speed relative to native: 1.00x = as fast as the native
filesystem, 0.50x = half the throughput / twice the time."""

from __future__ import annotations

from .util import MiB, median

# (case, metric, label, kind): kind "rate" = bytes / median seconds, "time" = median seconds
FS_ROWS = [
    ("io", "read_cold", "seq read 1 file, cold", "rate"),
    ("io", "read_cached", "seq read, cached", "rate"),
    ("io", "write", "seq write + fsync", "rate"),
    ("io", "background_after_write", "background work after the write", "time"),
    ("meta", "ls_cold", "ls -l N files, cold", "time"),
    ("meta", "ls_warm", "ls -l N files, warm", "time"),
    ("meta", "stat_warm", "N x stat, warm", "time"),
    ("meta", "create", "create N x 4 KiB files", "time"),
    ("meta", "rm", "rm -r N files", "time"),
    ("meta", "untar", "untar source tree", "time"),
]


def fs_value(results: dict, case: str, system: str, metric: str, kind: str):
    """The median figure: MB/s for rates, seconds for times (None if not run)."""
    r = results.get("cases", {}).get(case, {}).get(system)
    if not r or metric not in r.get("runs", {}):
        return None
    m = median(r["runs"][metric])
    if m is None:
        return None
    if kind == "rate":
        return r["bytes"] / m / 1e6 if m > 0 else None
    return m


def speed_ratio(v, native, kind: str):
    if v is None or native is None or v == 0 or native == 0:
        return None
    return v / native if kind == "rate" else native / v


def _fmt(v, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "rate":
        return f"{v:,.0f} MB/s"
    return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"


def fs_table(results: dict, systems: list[str]) -> str:
    p = results["params"]
    head = "| case | " + " | ".join(systems) + " |"
    lines = [head, "|" + "---|" * (len(systems) + 1)]
    for case, metric, label, kind in FS_ROWS:
        native = fs_value(results, case, "native", metric, kind)
        cells = []
        for s in systems:
            v = fs_value(results, case, s, metric, kind)
            r = speed_ratio(v, native, kind)
            cells.append(_fmt(v, kind) + (f" ({r:.2f}x)" if r is not None and s != "native" else ""))
        if any(c != "-" for c in cells):
            label = label.replace("N", f"{p['nfiles']:,}").replace("1 file", f"{p['file_mib']} MiB")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def catalog_table(results: dict) -> str:
    c = results.get("cases", {}).get("catalog", {})
    cols = ["sqlite", "mongo"]
    rows = [("entries", lambda r: f"{r['entries']:,}"),
            ("candidates (1%)", lambda r: f"{r['candidates']:,}"),
            ("policy selection, warm", lambda r: f"{median(r['select_warm']):.3f} s"),
            ("policy selection, cold cache", lambda r: f"{median(r['select_cold']):.3f} s"),
            ("rows_read (catalog counter)", lambda r: f"{median(r['rows_read']):,.0f}"),
            ("rows/documents the database fetched",
             lambda r: "-" if r.get("examined") is None else f"{r['examined']:,}"),
            ("index entries it walked",
             lambda r: "-" if r.get("keys_examined") is None else f"{r['keys_examined']:,}"),
            ("query plan", lambda r: f"`{r.get('plan', '')}`"),
            ("lookup p50", lambda r: f"{r['lookup_p50'] * 1e6:,.0f} µs"),
            ("lookup p99", lambda r: f"{r['lookup_p99'] * 1e6:,.0f} µs"),
            ("bulk load", lambda r: f"{r['load_s']:.0f} s")]
    lines = ["| catalog scale | SQLite | MongoDB |", "|---|---|---|"]
    for label, f in rows:
        cells = []
        for col in cols:
            r = c.get(col)
            if isinstance(r, str):
                cells.append(r)
            elif r is None:
                cells.append("not run")
            else:
                try:
                    cells.append(f(r))
                except (KeyError, TypeError):
                    cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tierfs_table(results: dict) -> str:
    cases = results.get("cases", {})
    lines = ["| tierfs only | figure |", "|---|---|"]
    a = cases.get("access")
    if a:
        t, nt = median(a["time"]), median(a.get("native_time") or [])
        ratio = f" ({nt / t:.2f}x native {nt:.2f} s)" if nt else ""
        lines += [f"| {a['reads_per_run']:,} x open+read+close of one cached file | {t:.2f} s{ratio} |",
                  f"| catalog atime writes for it (atime_flush {a['atime_flush_s']:.0f} s) | {a['atime_writes']} over "
                  f"{a['flush_intervals']} flush intervals = {a['writes_per_file_per_interval']:.2f} per file per interval |"]
    ar = cases.get("archive")
    if ar:
        mb = ar["files"] * ar["file_bytes"] / 1e6
        arc, res = median(ar["archive"]), median(ar["restore"])
        lines += [f"| archive -r --wait {ar['files']:,} x {ar['file_bytes'] / 1e6:g} MB to vault | {arc:.1f} s "
                  f"({mb / arc:.0f} MB/s, {ar['files'] / arc:.0f} files/s) |",
                  f"| restore -r --wait of them | {res:.1f} s ({mb / res:.0f} MB/s, {ar['files'] / res:.0f} files/s) |",
                  f"| {ar['openers']} concurrent openers of one archived 8 MiB file | all done in "
                  f"{median(ar['open_wait']):.2f} s; vault reads per run {ar['vault_reads']} |"]
    return "\n".join(lines)


# ---- per-operation latency (issue 16) ---------------------------------------------------
def ops_value(results: dict, system: str, op: str):
    """Median over the runs of the per-run median latency, µs (None if not run)."""
    r = results.get("cases", {}).get("ops", {}).get(system)
    return median(r["runs"].get(op, [])) if r else None


def ops_label(results: dict, op: str) -> str:
    from .cases_ops import LABELS
    p = results["params"]
    return LABELS[op].format(n=f"{p.get('ops_n', 0):,}", big=f"{p.get('ops_big', 0):,}")


def xattrs_4096(results: dict, system: str):
    r = results.get("cases", {}).get("ops", {}).get(system)
    if not r or not r.get("xattrs_4096"):
        return None, None
    ok = [x["seconds"] for x in r["xattrs_4096"] if not x["error"]]
    return (median(ok) if ok else None), r["xattrs_4096"][0]["error"]


def ops_table(results: dict, systems: list[str]) -> str:
    from .cases_ops import OPS
    cols = [s for s in systems if s in results.get("cases", {}).get("ops", {})]
    if not cols:
        return ""
    lines = ["| µs per operation (median) | " + " | ".join(cols) + " | tierfs / mergerfs | tierfs / floor |",
             "|" + "---|" * (len(cols) + 3)]

    def ratio(a, b):
        return f"{a / b:.1f}x" if a and b else "-"
    for op in OPS:
        vals = {s: ops_value(results, s, op) for s in cols}
        errs = {s: results["cases"]["ops"][s].get("errors", {}).get(op) for s in cols}
        if not any(vals.values()) and not any(errs.values()):
            continue
        cells = [f"{vals[s]:,.0f}" if vals[s] is not None else (errs[s] or "-") for s in cols]
        t = vals.get("tierfs")
        lines.append(f"| {ops_label(results, op)} | " + " | ".join(cells)
                     + f" | {ratio(t, vals.get('mergerfs'))} | {ratio(t, vals.get('pyfuse3-floor'))} |")
    cells = []
    for s in cols:
        v, err = xattrs_4096(results, s)
        cells.append(f"{v:.3f} s" if v is not None else (err or "-"))
    lines.append("| 4,096 setxattr on one file (total) | " + " | ".join(cells) + " | | |")
    db = {k: v for k, v in results.get("cases", {}).get("dbench", {}).items() if "mb_s" in v}
    failed = {k: v["error"] for k, v in results.get("cases", {}).get("dbench", {}).items() if "error" in v}
    if db or failed:
        cells = [f"{db[s]['mb_s']:,.1f} MB/s" if s in db else "failed" if s in failed else "-" for s in cols]
        t, m = db.get("tierfs", {}).get("mb_s"), db.get("mergerfs", {}).get("mb_s")
        f = db.get("pyfuse3-floor", {}).get("mb_s")
        lines.append(f"| dbench -t {results['params'].get('dbench_s')} 2 (throughput) | " + " | ".join(cells)
                     + f" | {ratio(t, m)} | {ratio(t, f)} |")
        for opname in ("NTCreateX", "Rename", "Find", "QPathInformation", "Unlink", "ReadX", "WriteX"):
            if any(opname in db.get(s, {}).get("ops", {}) for s in cols):
                cells = [f"{db[s]['ops'][opname]['avg_ms'] * 1000:,.0f}" if opname in db.get(s, {}).get("ops", {})
                         else "-" for s in cols]
                lat = lambda s: db.get(s, {}).get("ops", {}).get(opname, {}).get("avg_ms")  # noqa: E731
                lines.append(f"| dbench {opname}, mean µs | " + " | ".join(cells)
                             + f" | {ratio(lat('tierfs'), lat('mergerfs'))} | {ratio(lat('tierfs'), lat('pyfuse3-floor'))} |")
    return "\n".join(lines)


def ops_targets(results: dict, add) -> None:
    """Issue 16: each operation within 3x of mergerfs and 1.5x of the floor; dbench >= 1/3 of mergerfs;
    4,096 setxattr < 0.5 s."""
    from .cases_ops import OPS
    if not results.get("cases", {}).get("ops"):
        add("metadata operations within 3x of mergerfs and 1.5x of the pyfuse3 floor", None, "not run")
    for op in OPS:
        t, m, f = (ops_value(results, s, op) for s in ("tierfs", "mergerfs", "pyfuse3-floor"))
        if t is None:
            continue
        ok = None if m is None and f is None else ((m is None or t <= 3 * m) and (f is None or t <= 1.5 * f))
        if op == "listdir_big":
            ok = None if m is None else t <= 3 * m
        add(f"{ops_label(results, op)}: <= 3x mergerfs" + ("" if op == "listdir_big" else ", <= 1.5x floor"), ok,
            f"tierfs {t:,.0f} µs, mergerfs {m or 0:,.0f} µs ({t / m if m else 0:.1f}x), floor {f or 0:,.0f} µs "
            f"({t / f if f else 0:.1f}x)")
    v, err = xattrs_4096(results, "tierfs")
    if results.get("cases", {}).get("ops", {}).get("tierfs"):
        add("4,096 setxattr on one file < 0.5 s", None if v is None and not err else (v is not None and v < 0.5),
            f"{v:.3f} s" if v is not None else err)
    db = results.get("cases", {}).get("dbench", {})
    t, m = db.get("tierfs", {}).get("mb_s"), db.get("mergerfs", {}).get("mb_s")
    f = db.get("pyfuse3-floor", {}).get("mb_s")
    add("dbench throughput >= 1/3 of mergerfs", None if None in (t, m) else t >= m / 3,
        "not run" if None in (t, m) else f"tierfs {t:.1f} MB/s, mergerfs {m:.1f} MB/s ({t / m:.2f}), pyfuse3 floor "
        f"{f or 0:.1f} MB/s ({(f or 0) / m:.2f})")


def roundtrips_table(results: dict) -> str:
    from .roundtrips import ROWS
    r = results.get("cases", {}).get("roundtrips")
    if not r:
        return ""
    if isinstance(r, str):
        return f"MongoDB round trips per request: {r}"
    lines = ["| MongoDB round trips per request | attrs cached (attr_timeout 1 s) | attrs expired (attr_timeout 0) | "
             "commands (expired) |", "|---|---|---|---|"]
    for row, label in ROWS:
        c, e = r.get("cached", {}).get(row), r.get("expired", {}).get(row)
        if c is None and e is None:
            continue
        cmds = ", ".join(e["commands"]) if e else ""
        lines.append(f"| {label} | {c['n'] if c else '-'} | {e['n'] if e else '-'} | {cmds} |")
    return "\n".join(lines)


def roundtrips_target(results: dict, add) -> None:
    r = results.get("cases", {}).get("roundtrips")
    if not isinstance(r, dict):
        add("MongoDB: at most 2 round trips per request", None, r or "not run")
        return
    from .roundtrips import ROWS
    labels = dict(ROWS)
    over = {row: v["n"] for row, v in r.get("cached", {}).items() if v["n"] > 2}
    add("MongoDB: at most 2 round trips per request (attrs cached)", not over,
        "over 2: " + ", ".join(f"{labels.get(k, k)} {n}" for k, n in over.items()) if over else "all <= 2")


# ---- FUSE passthrough (issue 17) ----------------------------------------------------------
PT_SYSTEM = "tierfs"   # the system the issue 17 targets are about (passthrough = true, the default)
IO_STEPS = [("write", "write + fsync"), ("read_cold", "read cold"), ("read_cached", "read cached")]


def passthrough_label(pt: dict | None) -> str:
    """A daemon's passthrough state ({"active", "why"} in user.tierfs.stats) in words."""
    if pt is None:
        return "not reported by the daemon"
    return "active" if pt.get("active") else f"off: {pt.get('why') or 'no reason given'}"


def daemon_requests(r: dict, step: str, how=median):
    """(reads, writes) the daemon got during a step: `how` of the counts of its runs, or None if not counted."""
    c = r.get("daemon_requests", {}).get(step)
    return None if c is None else (how(c["read"]), how(c["write"]))


def _rw(rw) -> str:
    return "-" if rw is None else f"{rw[0]:,.0f} / {rw[1]:,.0f}"


def passthrough_tables(results: dict, systems: list[str]) -> str:
    """Issue 17's figures: sequential I/O per system with the daemon's read/write requests, and the read of
    a restored file against an online one per tierfs system."""
    cases = results.get("cases", {})
    io, rr = cases.get("io", {}), cases.get("restored_read", {})
    lines = []
    cols = [s for s in systems if s in io]
    if cols:
        lines += [f"| {results['params']['file_mib']} MiB, MB/s (x native) | passthrough | "
                  + " | ".join(label for _, label in IO_STEPS) + " | "
                  + " | ".join(f"daemon r / w: {label}" for _, label in IO_STEPS) + " |",
                  "|" + "---|" * (2 + 2 * len(IO_STEPS))]
        for s in cols:
            cells = []
            for metric, _ in IO_STEPS:
                v, nat = (fs_value(results, "io", x, metric, "rate") for x in (s, "native"))
                r = speed_ratio(v, nat, "rate")
                cells.append(_fmt(v, "rate") + (f" ({r:.2f}x)" if r is not None and s != "native" else ""))
            pt = passthrough_label(io[s]["passthrough"]) if "passthrough" in io[s] else "-"
            lines.append(f"| {s} | {pt} | " + " | ".join(cells) + " | "
                         + " | ".join(_rw(daemon_requests(io[s], m)) for m, _ in IO_STEPS) + " |")
    if rr:
        if lines:
            lines.append("")
        mib = next((r["bytes"] // MiB for r in rr.values() if "bytes" in r), "?")
        lines += [f"| archived, restored, then read ({mib} MiB), MB/s | passthrough | online file, cold | "
                  "restored, cold | online file, cached | restored, cached | daemon reads, cold: online / "
                  "restored | daemon reads, cached: online / restored | archive --wait | restore --wait |",
                  "|" + "---|" * 10]
        for s, r in rr.items():
            if "error" in r:
                lines.append(f"| {s} | failed: {r['error']} |" + " |" * 8)
                continue
            cells = []
            for how in ("cold", "cached"):
                online, got = (fs_value(results, "restored_read", s, f"{f}_{how}", "rate")
                               for f in ("online", "restored"))
                cells += [_fmt(online, "rate"), _fmt(got, "rate") + (f" ({got / online:.2f}x online)"
                                                                     if got and online else "")]
            reads = [" / ".join("-" if rw is None else f"{rw[0]:,.0f}"
                                for rw in (daemon_requests(r, f"{f}_{how}") for f in ("online", "restored")))
                     for how in ("cold", "cached")]
            lines.append(f"| {s} | {passthrough_label(r.get('passthrough'))} | " + " | ".join(cells + reads)
                         + f" | {r['archive_s']:.2f} s | {r['restore_s']:.2f} s |")
    if lines:
        lines += ["", "daemon r / w: the FUSE read / write requests that reached the daemon during one timed read or "
                  "write (median over the runs; `requests` in user.tierfs.stats); with passthrough the kernel serves "
                  "them from the object file."]
    return "\n".join(lines)


def passthrough_targets(results: dict, add) -> None:
    """Issue 17, on tierfs with passthrough: write + fsync, cold and cached reads >= 0.9x native; no read
    or write request reaches the daemon; a restored file reads >= 0.9x as fast as an online one."""
    cases = results.get("cases", {})
    io = cases.get("io", {}).get(PT_SYSTEM)
    pt = io.get("passthrough") if io else None
    for metric, label in IO_STEPS:
        name = f"{results['params']['file_mib']} MiB {label} >= 0.9x native ({PT_SYSTEM}, passthrough)"
        t, nat = (fs_value(results, "io", s, metric, "rate") for s in (PT_SYSTEM, "native"))
        if None in (t, nat):
            add(name, None, "not run")
            continue
        others = {s: fs_value(results, "io", s, metric, "rate") for s in ("tierfs-nopt", "pyfuse3-floor")}
        figs = f"{PT_SYSTEM} {t:,.0f} MB/s = {t / nat:.2f}x native {nat:,.0f} MB/s; " + _figs(**others, unit="MB/s")
        if not (pt or {}).get("active"):
            # This run measured tierfs without passthrough: no verdict on passthrough from it.
            add(name, None, f"passthrough {passthrough_label(pt)}; {figs}")
        else:
            add(name, t >= 0.9 * nat, figs)
    rr = cases.get("restored_read", {}).get(PT_SYSTEM, {})
    counted = {f"io {label}": daemon_requests(io, step, sum) for step, label in IO_STEPS} if io else {}
    counted.update({f"restored file read {how}": daemon_requests(rr, f"restored_{how}", sum)
                    for how in ("cold", "cached")})
    counted = {k: v for k, v in counted.items() if v is not None}
    add(f"read and write requests reaching the daemon: 0 ({PT_SYSTEM}, passthrough)",
        None if not counted else not any(sum(v) for v in counted.values()),
        "not run" if not counted else f"passthrough {passthrough_label(pt)}; reads / writes in all runs: "
        + ", ".join(f"{k} {_rw(v)}" for k, v in counted.items()))
    for s, r in cases.get("restored_read", {}).items():
        name = f"restored file read (cold, cached) >= 0.9x the online file's ({s})"
        if "error" in r:
            add(name, False, f"failed: {r['error']}")
            continue
        rates = {how: tuple(fs_value(results, "restored_read", s, f"{f}_{how}", "rate") for f in ("restored", "online"))
                 for how in ("cold", "cached")}
        if None in (v for pair in rates.values() for v in pair):
            add(name, None, "not run")
            continue
        add(name, all(got >= 0.9 * online for got, online in rates.values()),
            ", ".join(f"{how} {got:,.0f} vs {online:,.0f} MB/s ({got / online:.2f}x)"
                      for how, (got, online) in rates.items())
            + f"; passthrough {passthrough_label(r.get('passthrough'))}")


# ---- targets ------------------------------------------------------------------------
def targets(results: dict) -> list[dict]:
    """Each target of issue 8 with its figures and met / missed / not run."""
    out = []

    def v(case, system, metric, kind):
        return fs_value(results, case, system, metric, kind)

    def add(name, ok, figures):
        out.append({"target": name, "status": "not run" if ok is None else ("met" if ok else "missed"),
                    "figures": figures})

    nat = v("io", "native", "read_cold", "rate")
    t = v("io", "tierfs", "read_cold", "rate")
    peers = {s: v("io", s, "read_cold", "rate") for s in ("mergerfs", "rclone-off", "rclone-full")}
    peers = {k: x for k, x in peers.items() if x}
    best = max(peers.values()) if peers else None
    ok = None if None in (nat, t) else (t >= 0.6 * nat and (best is None or t >= best))
    floor = {"pyfuse3-floor": v("io", "pyfuse3-floor", "read_cold", "rate")}
    add("seq read cold >= 0.6x native and >= best of mergerfs/rclone", ok,
        _figs(tierfs=t, native=nat, **peers, **floor, unit="MB/s"))
    nat, t = v("io", "native", "read_cached", "rate"), v("io", "tierfs", "read_cached", "rate")
    add("cached re-read >= 0.9x native", None if None in (nat, t) else t >= 0.9 * nat,
        _figs(tierfs=t, native=nat, **{"pyfuse3-floor": v("io", "pyfuse3-floor", "read_cached", "rate")},
              unit="MB/s"))
    nat, t, m = (v("io", s, "write", "rate") for s in ("native", "tierfs", "mergerfs"))
    add("seq write >= 0.5x native and >= mergerfs default",
        None if None in (nat, t) else (t >= 0.5 * nat and (m is None or t >= m)),
        _figs(tierfs=t, native=nat, mergerfs=m, unit="MB/s"))
    t, m = v("meta", "tierfs", "ls_warm", "time"), v("meta", "mergerfs", "ls_warm", "time")
    add("ls -l 10k warm no slower than mergerfs (xattrs on)", None if None in (t, m) else t <= m,
        _figs(tierfs=t, mergerfs=m, unit="s"))
    t = v("meta", "tierfs-noxattr", "ls_warm", "time")
    add("ls -l 10k warm < 0.5 s with xattrs = false", None if t is None else t < 0.5,
        _figs(**{"tierfs-noxattr": t}, unit="s"))
    nat, t = v("meta", "native", "stat_warm", "time"), v("meta", "tierfs", "stat_warm", "time")
    add("10k stat warm <= 2x native", None if None in (nat, t) else t <= 2 * nat, _figs(tierfs=t, native=nat, unit="s"))
    t, m = v("meta", "tierfs", "create", "time"), v("meta", "mergerfs", "create", "time")
    add("10k small-file create <= 3x mergerfs", None if None in (t, m) else t <= 3 * m,
        _figs(tierfs=t, mergerfs=m, **{"pyfuse3-floor": v("meta", "pyfuse3-floor", "create", "time")}, unit="s"))
    c = results.get("cases", {}).get("catalog", {})
    for col, label in (("sqlite", "SQLite"), ("mongo", "MongoDB")):
        r = c.get(col)
        if not isinstance(r, dict):
            add(f"policy selection on {label}: < 2 s, rows read proportional to candidates", None, r or "not run")
            continue
        sel = max(median(r["select_warm"]), median(r["select_cold"]))
        rows = median(r["rows_read"])
        ex = r.get("examined")
        prop = rows <= 2 * r["candidates"] and (ex is None or ex <= 10 * r["candidates"])
        add(f"policy selection on {label}: < 2 s, rows read proportional to candidates",
            sel < 2 and prop, f"{sel:.2f} s (worst of warm/cold) on {r['entries']:,} entries; rows_read {rows:,.0f} "
            f"for {r['candidates']:,} candidates; fetched {ex if ex is None else format(ex, ',')} "
            f"(index entries {format(r['keys_examined'], ',') if r.get('keys_examined') is not None else '-'}) "
            f"(plan: {r.get('plan')})")
    ops_targets(results, add)
    roundtrips_target(results, add)
    from .contention import target as contention_target
    contention_target(results, add)
    a = results.get("cases", {}).get("access")
    add("access tracking < 1 catalog write per file per flush interval",
        None if not a else a["writes_per_file_per_interval"] < 1 or a["atime_writes"] <= 1,
        "not run" if not a else f"{a['atime_writes']} writes in {a['flush_intervals']} intervals of "
        f"{a['atime_flush_s']:.0f} s for {a['reads_per_run'] * len(a['time']):,} opens of one file")
    ar = results.get("cases", {}).get("archive")
    add("10 concurrent openers of one archived file: 1 vault read",
        None if not ar else all(x == 1 for x in ar["vault_reads"]),
        "not run" if not ar else f"vault reads per run {ar['vault_reads']}")
    first = len(out)
    passthrough_targets(results, add)
    for t in out[first:]:
        t["issue"] = 17   # printed in their own section (render)
    return out


def _figs(unit: str, **kw) -> str:
    return ", ".join(f"{k} {x:,.3f} {unit}" if unit == "s" else f"{k} {x:,.0f} {unit}"
                     for k, x in kw.items() if x is not None)


def targets_table(results: dict, issue: int | None = None) -> str:
    """The verdicts of one issue's section (`issue`), or of the others."""
    lines = ["| target | verdict | figures |", "|---|---|---|"]
    for t in results.get("targets", []):
        if t.get("issue") != issue:
            continue
        mark = {"met": "met", "missed": "**missed**"}.get(t["status"], t["status"])
        lines.append(f"| {t['target']} | {mark} | {t['figures']} |")
    return "\n".join(lines)


def render(results: dict, systems: list[str]) -> str:
    """The whole report as Markdown (what the command prints and RESULTS.md holds)."""
    m = results["meta"]
    mach = m["machine"]
    disk = m.get("disk", {})
    p = results["params"]
    loads = [x["load"][0] for x in m.get("load_log", [])]
    out = [f"Run {m['date']} on {mach.get('nproc')} cores ({mach.get('cpu', '?')}), {mach.get('memory_gib')} GiB, "
           f"kernel {mach.get('kernel')}, {mach.get('os', '')}; disk {disk.get('source')} {disk.get('fstype')} "
           f"({disk.get('model', '')}, {disk.get('size_gib', '?')} GiB, {disk.get('options', '')}).",
           f"tierfs code: {m.get('code', '?')}. "
           f"Load average at start {m['load_start']}, end {m['load_end']}"
           + (f", 1-min range during the run {min(loads):.2f}-{max(loads):.2f}" if loads else "") + ".",
           f"Median of {p['runs']} runs; file {p['file_mib']} MiB; N = {p['nfiles']:,}; "
           f"tree {p.get('tree', {}).get('files', '?')} files; page cache dropped before cold runs: "
           f"{'yes' if not m.get('drop_caches_error') else m['drop_caches_error']}.",
           "Ratios are speed relative to native (0.50x = half the throughput or twice the time).", ""]
    out += [fs_table(results, systems), ""]
    ot = ops_table(results, systems)
    if ot:
        out += [ot, ""]
    if "catalog" in results.get("cases", {}):
        out += [catalog_table(results), ""]
    rt = roundtrips_table(results)
    if rt:
        out += [rt, ""]
    if results.get("cases", {}).get("access") or results.get("cases", {}).get("archive"):
        out += [tierfs_table(results), ""]
    from .contention import table as contention_table
    ct = contention_table(results)
    if ct:
        out += [ct, ""]
    out += ["Targets:", "", targets_table(results), ""]
    pt = passthrough_tables(results, systems)
    if pt:
        out += ["Issue 17: passthrough", "", pt, "", targets_table(results, issue=17), ""]
    notes = results.get("notes", {})
    if notes:
        out.append("Systems:")
        for s, n in notes.items():
            out.append(f"- {s}: " + ", ".join(f"{k}={v}" for k, v in n.items()))
    return "\n".join(out) + "\n"
