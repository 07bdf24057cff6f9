"""The benchmark command (./bench/run runs this after installing what it needs).

Runs each case on each system, prints the table of medians and ratios to
native and the verdict on each target, and writes everything as JSON.
See bench/README.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback

from . import cases_fs, cases_ops, cases_tierfs, catalog_scale, contention, report, roundtrips, systems
from .util import MiB, disk_of, drop_caches, drop_error, loadavg, machine

BENCH = os.path.dirname(os.path.abspath(__file__))

PRESETS = {
    # full: the sizes issue 8 asks for
    "full": dict(runs=5, file_mib=1024, nfiles=10_000, tree_files=3000, catalog_entries=1_000_000,
                 catalog_lookups=10_000, access_reads=100_000, archive_files=1000, archive_bytes=1_000_000,
                 ops_n=500, ops_big=10_000, dbench_s=30,
                 contention_mounts=4, contention_s=20, contention_delay_ms=2),
    # quick: minutes, for iterating on a change
    "quick": dict(runs=3, file_mib=256, nfiles=2000, tree_files=600, catalog_entries=100_000,
                  catalog_lookups=2000, access_reads=10_000, archive_files=100, archive_bytes=1_000_000,
                  ops_n=500, ops_big=10_000, dbench_s=10,
                  contention_mounts=4, contention_s=8, contention_delay_ms=2),
    # tiny: seconds, for the smoke test
    "tiny": dict(runs=1, file_mib=4, nfiles=40, tree_files=30, catalog_entries=2000,
                 catalog_lookups=100, access_reads=200, archive_files=4, archive_bytes=65536,
                 ops_n=20, ops_big=100, dbench_s=2,
                 contention_mounts=2, contention_s=1, contention_delay_ms=1),
}
CASES = ["io", "meta", "ops", "dbench", "catalog", "roundtrips", "access", "archive", "contention"]
#: the cases run in a mount of each system of --systems ("archive" too, on tierfs systems: the read of a
#: restored file against an online one, issue 17; the rest of it runs on one tierfs mount of its own)
FS_CASES = ["io", "meta", "ops", "dbench"]
#: systems listed here are remounts of another one for the listing figures only
VARIANTS = {"tierfs": [("tierfs-noxattr", {"xattrs": "false"})], "mergerfs": [("mergerfs-nosys", "xattr=nosys")]}
MAIN_SYSTEMS = ["native", "tierfs", "tierfs-nopt", "pyfuse3-floor", "mergerfs", "rclone-off", "rclone-full"]
#: systems of MAIN_SYSTEMS that run only these cases unless --systems names them. Passthrough changes how
#: a file's bytes travel (reads and writes), so tierfs without it is compared where bytes move; a second
#: tierfs column for the metadata, operations and dbench cases would add tierfs's share of the full run again.
DEFAULT_ONLY = {"tierfs-nopt": {"io", "archive"}}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="smaller sizes, 3 runs (minutes)")
    g.add_argument("--tiny", action="store_true", help="tiny sizes, 1 run (the smoke test)")
    p.add_argument("--runs", type=int, help="runs per figure (the median is reported)")
    p.add_argument("--json", dest="json_path", help="write the results here (default bench/results/DATE.json)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--systems", help=f"comma-separated subset of {','.join(systems.ALL)} (default: "
                   f"{','.join(MAIN_SYSTEMS)}; " + "; ".join(f"{k} runs only {','.join(sorted(v))} unless named"
                                                            for k, v in DEFAULT_ONLY.items()) + ")")
    p.add_argument("--no-variants", action="store_true", help="skip the xattrs-off remounts for ls/stat")
    p.add_argument("--workdir", default="/var/tmp/tierfs-bench", help="scratch directory (same disk as native)")
    p.add_argument("--profile", action="store_true", help="py-spy profiles of the tierfs daemon per case")
    p.add_argument("--results-md", action="store_true", help="also write bench/RESULTS.md")
    p.add_argument("--tierfs-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra -o option for every tierfs mount (experiments)")
    p.add_argument("--tierfs-read-ahead-kb", type=int, metavar="KB",
                   help="set the tierfs mounts' read_ahead_kb (/sys/class/bdi) after mounting (experiments)")
    for k in PRESETS["full"]:
        if k != "runs":
            p.add_argument("--" + k.replace("_", "-"), type=int, help=f"override {k}")
    return p.parse_args(argv)


class Bench:
    def __init__(self, args):
        self.args = args
        preset = "tiny" if args.tiny else "quick" if args.quick else "full"
        self.p = dict(PRESETS[preset], preset=preset)
        for k in PRESETS["full"]:
            if getattr(args, k, None) is not None:
                self.p[k] = getattr(args, k)
        self.p["tierfs_options"] = dict(o.split("=", 1) for o in args.tierfs_option)
        self.p["tierfs_read_ahead_kb"] = args.tierfs_read_ahead_kb
        self.cases = [c for c in args.cases.split(",") if c]
        self.systems = [s for s in args.systems.split(",") if s] if args.systems else list(MAIN_SYSTEMS)
        self.only = {} if args.systems else DEFAULT_ONLY
        self.workdir = os.path.abspath(args.workdir)
        self.results = {
            "meta": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "machine": machine(), "load_start": loadavg(), "load_log": [], "errors": []},
            "params": self.p, "cases": {}, "notes": {}, "profiles": {}}

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def mark(self, what: str) -> None:
        self.results["meta"]["load_log"].append({"what": what, "time": time.time(), "load": loadavg()})

    def make(self, name: str):
        s = systems.make(name, self.workdir)
        if isinstance(s, systems.Tierfs):
            s.options.update(self.p["tierfs_options"])
            s.set_read_ahead_kb = self.args.tierfs_read_ahead_kb
        return s

    def fs_cases_of(self, s) -> list[str]:
        """The cases of this run that mount system `s` (see FS_CASES and DEFAULT_ONLY)."""
        cases = [c for c in self.cases if c in FS_CASES or (c == "archive" and isinstance(s, systems.Tierfs))]
        only = self.only.get(s.name)
        return [c for c in cases if only is None or c in only]

    def profiled(self, s, case: str):
        """A py-spy recording of the tierfs daemon during `case` (or nothing)."""
        import contextlib
        if not (self.args.profile and isinstance(s, systems.Tierfs)):
            return contextlib.nullcontext()
        from .profile import Profiler
        path = os.path.join(self.outdir, f"profile-{s.name}-{case}.txt")
        self.results["profiles"][f"{s.name}/{case}"] = path
        return Profiler(s.pid, path)

    # ---- cases ------------------------------------------------------------------
    def run_fs_cases(self) -> None:
        p = self.p
        tarball = os.path.join(self.workdir, f"tree-{p['tree_files']}.tar")
        if not os.path.exists(tarball):
            self.p["tree"] = cases_fs.make_tree_tar(tarball + ".tmp", p["tree_files"])
            os.rename(tarball + ".tmp", tarball)
        else:
            self.p["tree"] = {"files": p["tree_files"]}
        for name in self.systems:
            try:
                s = self.make(name)
            except ValueError as e:
                self.results["meta"]["errors"].append(f"{name}: {e}")
                self.log(f"{name}: {e}")
                continue
            cases = self.fs_cases_of(s)
            if not cases:
                continue
            why = systems.available(name)
            if why:
                self.results["meta"]["errors"].append(f"{name}: skipped: {why}")
                self.log(f"{name}: skipped: {why}")
                continue
            self.log(f"{name}: mounting")
            try:
                with s:
                    if isinstance(s, systems.Tierfs):
                        s.notes["passthrough"] = report.passthrough_label(s.passthrough())
                    if "io" in cases:
                        self.mark(f"{name} io")
                        with self.profiled(s, "io"):
                            runs, requests = cases_fs.seq_io(s, p["file_mib"] * MiB, p["runs"])
                        io = {"runs": runs, "bytes": p["file_mib"] * MiB}
                        if isinstance(s, systems.Tierfs):
                            io.update(daemon_requests=requests, passthrough=s.passthrough())
                        self.results["cases"].setdefault("io", {})[name] = io
                        self.log(f"  io: { {k: round(min(v), 3) for k, v in runs.items()} } (best s)"
                                 + (f"; daemon read/write requests {requests}" if requests else ""))
                    if "archive" in cases:
                        self.run_restored_read(s)
                    if "meta" in cases:
                        self.mark(f"{name} meta")
                        variants = [] if self.args.no_variants else VARIANTS.get(name, [])
                        with self.profiled(s, "meta"):
                            runs, extra = cases_fs.metadata(s, p["nfiles"], tarball, p["runs"], variants)
                        self.results["cases"].setdefault("meta", {})[name] = {"runs": runs}
                        for vname, vruns in extra.items():
                            self.results["cases"]["meta"][vname] = {"runs": vruns}
                            self.results["notes"][vname] = {"remount of": name,
                                                            "options": dict(variants)[vname]}
                        self.log(f"  meta: { {k: round(min(v), 3) for k, v in runs.items()} } (best s)")
                    if "ops" in cases:
                        self.mark(f"{name} ops")
                        with self.profiled(s, "ops"):
                            self.results["cases"].setdefault("ops", {})[name] = cases_ops.ops(
                                s, p["ops_n"], p["ops_big"], p["runs"], self.log)
                    if "dbench" in cases:
                        self.run_dbench(s)
                    self.results["notes"][name] = s.notes
            except Exception as e:  # noqa: BLE001 - one broken system must not lose the others' figures
                self.results["meta"]["errors"].append(f"{name}: {e}")
                self.log(f"{name}: FAILED: {e}\n{traceback.format_exc()}")
            self.mark(f"{name} done")

    def run_restored_read(self, s) -> None:
        self.mark(f"{s.name} restored read")
        try:
            with self.profiled(s, "restored"):
                r = cases_tierfs.restored_read(s, self.p["file_mib"] * MiB, self.p["runs"], self.log)
        except Exception as e:  # noqa: BLE001 - the system's other cases still run
            r = {"error": str(e)[-300:]}
            self.results["meta"]["errors"].append(f"{s.name} restored read: {e}")
            self.log(f"  restored read FAILED: {e}\n{traceback.format_exc()}")
        self.results["cases"].setdefault("restored_read", {})[s.name] = r

    def run_dbench(self, s) -> None:
        why = cases_ops.dbench_available()
        if why:
            if not any("dbench" in e for e in self.results["meta"]["errors"]):
                self.results["meta"]["errors"].append(f"dbench: skipped: {why}")
            return
        self.mark(f"{s.name} dbench")
        try:
            with self.profiled(s, "dbench"):
                r = cases_ops.dbench(s, self.p["dbench_s"])
        except Exception as e:  # noqa: BLE001 - a system that cannot run it (rclone without its cache) says so
            self.results["cases"].setdefault("dbench", {})[s.name] = {"error": str(e)[-300:]}
            self.log(f"  dbench failed: {e}")
            return
        self.results["cases"].setdefault("dbench", {})[s.name] = r
        self.log(f"  dbench: {r['mb_s']:.1f} MB/s")

    def run_catalog(self) -> None:
        p = self.p
        out = self.results["cases"].setdefault("catalog", {})
        self.mark("catalog sqlite")
        self.log(f"catalog scale: {p['catalog_entries']:,} entries on SQLite")
        try:
            out["sqlite"] = catalog_scale.run_sqlite(self.workdir, p["catalog_entries"], p["runs"],
                                                     p["catalog_lookups"], self.log)
        except Exception as e:  # noqa: BLE001
            out["sqlite"] = f"failed: {e}"
            self.log(traceback.format_exc())
        why = catalog_scale.mongo_available()
        if why:
            out["mongo"] = why
            self.log(f"catalog scale on MongoDB: {why}")
            return
        self.mark("catalog mongo")
        self.log(f"catalog scale: {p['catalog_entries']:,} entries on MongoDB")
        try:
            out["mongo"] = catalog_scale.run_mongo(self.workdir, p["catalog_entries"], p["runs"],
                                                   p["catalog_lookups"], self.log)
        except Exception as e:  # noqa: BLE001
            out["mongo"] = f"failed: {e}"
            self.log(traceback.format_exc())

    def _mongo_case(self, name: str, title: str, run) -> None:
        """A case that needs the tests' mongod: skipped with the reason when it cannot start; a
        failure is recorded in the results and the log, and the other cases still run."""
        why = catalog_scale.mongo_available()
        if why:
            self.results["cases"][name] = why
            self.log(f"{title}: {why}")
            return
        self.mark(name)
        self.log(title)
        try:
            self.results["cases"][name] = run()
        except Exception as e:  # noqa: BLE001
            self.results["cases"][name] = f"failed: {e}"
            self.results["meta"]["errors"].append(f"{name}: {e}")
            self.log(traceback.format_exc())
        self.mark(f"{name} done")

    def run_roundtrips(self) -> None:
        self._mongo_case("roundtrips", "round trips to mongod per FUSE request",
                         lambda: roundtrips.run(self.workdir, self.log))

    def run_contention(self) -> None:
        p = self.p
        self._mongo_case("contention",
                         f"create contention: 1 and {p['contention_mounts']} mounts on a 3-member replica set",
                         lambda: contention.run(self.workdir, p["contention_mounts"], p["contention_s"], p["runs"],
                                                self.log, delay_ms=p["contention_delay_ms"]))

    def run_tierfs_cases(self) -> None:
        p = self.p
        s = systems.Tierfs(self.workdir, name="tierfs-jobs",
                           extra_config=f"atime_flush = {cases_tierfs.ATIME_FLUSH_S}",
                           options=self.p["tierfs_options"])
        nat = systems.Native(self.workdir)
        try:
            with s, nat:
                if "access" in self.cases:
                    self.mark("access")
                    self.log("access tracking")
                    with self.profiled(s, "access"):
                        self.results["cases"]["access"] = cases_tierfs.access_tracking(
                            s, nat.path, p["access_reads"], p["runs"], self.log)
                if "archive" in self.cases:
                    self.mark("archive")
                    self.log("archive/restore")
                    with self.profiled(s, "archive"):
                        self.results["cases"]["archive"] = cases_tierfs.archive_restore(
                            s, p["archive_files"], p["archive_bytes"], p["runs"], 10, self.log)
        except Exception as e:  # noqa: BLE001
            self.results["meta"]["errors"].append(f"tierfs cases: {e}")
            self.log(f"tierfs cases FAILED: {e}\n{traceback.format_exc()}")

    # ---- all --------------------------------------------------------------------
    def run(self) -> dict:
        os.makedirs(self.workdir, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.outdir = os.path.join(BENCH, "results")
        os.makedirs(self.outdir, exist_ok=True)
        json_path = self.args.json_path or os.path.join(self.outdir, f"bench-{stamp}.json")
        m = self.results["meta"]
        m["disk"] = disk_of(self.workdir)
        git = lambda *a: __import__("subprocess").run(["git", "-C", os.path.dirname(BENCH), *a],  # noqa: E731
                                                      capture_output=True, text=True).stdout.strip()
        m["code"] = git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if git("status", "--porcelain",
                                                                                          "--", "tierfs") else "")
        m["workdir"] = self.workdir
        if not drop_caches():
            m["drop_caches_error"] = drop_error()
        t0 = time.monotonic()
        if {*FS_CASES, "archive"} & set(self.cases):
            self.run_fs_cases()
        if "catalog" in self.cases:
            self.run_catalog()
        if "roundtrips" in self.cases:
            self.run_roundtrips()
        if "access" in self.cases or "archive" in self.cases:
            self.run_tierfs_cases()
        if "contention" in self.cases:
            self.run_contention()
        m["load_end"] = loadavg()
        m["duration_s"] = round(time.monotonic() - t0, 1)
        self.results["targets"] = report.targets(self.results)
        if self.args.profile:
            from .profile import summarize
            self.results["profile_summary"] = {k: summarize(v) for k, v in self.results["profiles"].items()}
        cols = [s for s in systems.ALL if any(s in self.results["cases"].get(c, {}) for c in ("io", "meta", "ops"))]
        text = report.render(self.results, cols)
        self.results["table_md"] = text
        with open(json_path, "w") as f:
            json.dump(self.results, f, indent=1)
        print(text)
        print(f"JSON: {json_path} (whole run {m['duration_s']:.0f} s)")
        if self.args.results_md:
            write_results_md(text, self.results)
        return self.results


def write_results_md(table: str, results: dict) -> None:
    path = os.path.join(BENCH, "RESULTS.md")
    head = ("# tierfs benchmark results\n\nThe latest full run of `./bench/run` (see README.md for what each case "
            "does). Regenerate with `./bench/run --results-md`.\n\n")
    extra = ""
    if results.get("profile_summary"):
        extra = "\n## Profiles (py-spy, share of samples)\n\n"
        for k, s in results["profile_summary"].items():
            extra += f"- {k}: own time " + ", ".join(f"{f} {x:.0%}" for f, x in s["self"][:8]) + "\n"
    with open(path, "w") as f:
        f.write(head + table + extra)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("bench/run: needs root (drop_caches, FUSE mounts of peers)", file=sys.stderr)
    Bench(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
