"""Read-side queries of the MongoDB catalog (policy candidates, `tierfs
find`, `du`, `status`): a mixin of catalog/mongo.py's MongoCatalog, which
supplies the collections and `_errors`. Kept apart so mongo.py stays about
the namespace and its atomic changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import itertools
import operator
from typing import Iterable, Iterator, Sequence

from .base import (ACTIVE_JOB_STATES, CANDIDATE_FIELDS, INODE_FIELDS, ROOT_INO, Candidate, CatalogStats, FileQuery,
                   Inode, Listed, State, candidate_from_values, check_count_by, count_further_copies,
                   fetch_ahead, further_copies, further_targets, group_totals, inode_from_values, map_ahead,
                   size_classes, states_only, totals_answer)

#: S_IFMT bits of a regular file / a directory, and the other type bits that must be clear.
REG_SET, REG_CLEAR = 0o100000, 0o070000
DIR_SET, DIR_CLEAR = 0o040000, 0o130000
#: ACTIVE_JOB_STATES as stored
_ACTIVE = [s.value for s in ACTIVE_JOB_STATES]


#: Rows per server round trip of query_names: each getMore of its inode cursor and each read of
#: those inodes' names ({ino: {$in: ...}} on the ino index) handles this many, so the first path comes
#: after one batch and each round trip stays far under the client's socket timeout (10 s) whatever
#: the catalog's size (measured in bench/RESULTS.md, catalog scale).
NAMES_BATCH = 5000  # (MongoQueries.names_batch)
#: Reads of names in flight in query_names (base.map_ahead).
NAMES_READERS = 2
#: query_names' first batch when it pages by inode number (the first path after one short round trip).
FIRST_NAMES = 500

#: A policy rule's candidates (Catalog.candidates, base.Candidate): one last-access range per size class
#: the rule's size bounds allow (base.candidate_classes), the size tested on the key, then the inode number
#: and every other field a policy decision reads, so the rule's find is covered: its keys are what it
#: returns and no document is read (the documents were the selection's cost at 10M: 12-14 us each in
#: mongod, 8 us in the client, and disk reads when the WiredTiger cache did not hold them). Its first four
#: fields serve `tierfs find --inactive --size` and count_by with both bounds.
CANDIDATES_INDEX = ([(k, 1) for k in ("state", "size_class", "last_access_ns", "size", "_id", "mode", "nlink", "uid",
                                      "gid", "mtime_ns", "crtime_ns", "tier", "archive_tier", "archive_location",
                                      "archive_copies", "data_version")], "candidates")

#: Values of fields a document may lack (made by an older tierfs, still mounted during a migration).
_ABSENT = {"stub_size": 0}


#: A stored inode document's values in INODE_FIELDS order (`_id` for ino), in one C call.
assert INODE_FIELDS[0] == "ino"
_VALUES = operator.itemgetter("_id", *INODE_FIELDS[1:])
#: A covered candidate's values in CANDIDATE_FIELDS order.
assert CANDIDATE_FIELDS[0] == "ino"
_CANDIDATE_VALUES = operator.itemgetter("_id", *CANDIDATE_FIELDS[1:])
_CANDIDATE_PROJECTION = {"_id": 1, **{k: 1 for k in CANDIDATE_FIELDS if k != "ino"}}


def inode_of(doc: dict) -> Inode:
    """An Inode from its stored document (`_id` is the inode number). A
    document that lacks a field (written by an older tierfs) takes the
    field by field path (6.6 us a document against 2.6 us; a policy run
    builds one per candidate)."""
    try:
        values = _VALUES(doc)
    except KeyError:
        values = [doc["_id"] if k == "ino" else doc.get(k, _ABSENT.get(k)) for k in INODE_FIELDS]
    return inode_from_values(values)


def _order(q: FileQuery):
    """Sort key of q's order for documents sorted here: last access (then
    inode) with order_by_last_access, else inode number."""
    if q.order_by_last_access:
        return lambda d: (d["last_access_ns"], d["_id"])
    return lambda d: d["_id"]


class MongoQueries:
    """query / query_names / paths_of / count_by / stats on the inodes and dentries collections."""

    names_batch = NAMES_BATCH

    @staticmethod
    def _filter(q: FileQuery, paging: bool = True) -> dict:
        """The inode-field part of q as a MongoDB filter (`under` and
        `name_glob` are namespace conditions: see _name_rows)."""
        f: dict = {"nlink": {"$gt": 0}}
        if q.states is not None:
            f["state"] = {"$in": [State(x).value for x in q.states]}
        if q.regular_only:
            # S_IFREG with the other type bits clear, as a range an index can bound (state_id covers it)
            f["mode"] = {"$gte": REG_SET, "$lt": REG_SET + 0o10000}
        for field_, val, op in (("tier", q.tier, "$eq"), ("archive_tier", q.archive_tier, "$eq"),
                                ("size", q.min_size, "$gte"), ("size", q.max_size, "$lte"),
                                ("last_access_ns", q.last_access_before_ns, "$lt"),
                                ("crtime_ns", q.crtime_before_ns, "$lt"),
                                ("mtime_ns", q.mtime_before_ns, "$lt"), ("uid", q.uid, "$eq"),
                                ("gid", q.gid, "$eq")):
            if val is not None:
                f.setdefault(field_, {})[op] = val
        classes = size_classes(q)
        if classes is not None:   # one last-access range per class on the candidates index
            f["size_class"] = {"$in": classes}
        if q.checksum_missing:
            f["checksum"] = {"$type": "null"}   # what the partial index no_checksum holds (not a missing field)
        if paging and not q.order_by_last_access and q.after_ino:
            f["_id"] = {"$gt": q.after_ino}
        return f

    @staticmethod
    def _by_name(q: FileQuery) -> bool:
        return getattr(q, "under", None) is not None or getattr(q, "name_glob", None) is not None

    def _subtree_dirs(self, top: int) -> list[int]:
        """`top` and every directory below it (breadth first, one
        aggregation per level and 1000 parents)."""
        dirs, frontier = [top], [top]
        while frontier:
            nxt = []
            for i in range(0, len(frontier), 1000):
                nxt += [d["ino"] for d in self.dentries.aggregate([
                    {"$match": {"parent": {"$in": frontier[i:i + 1000]}}},
                    {"$lookup": {"from": "inodes", "localField": "ino", "foreignField": "_id", "as": "i",
                                 "pipeline": [{"$project": {"mode": 1}}]}},
                    {"$match": {"i.mode": {"$bitsAllSet": DIR_SET, "$bitsAllClear": DIR_CLEAR}}},
                    {"$project": {"ino": 1}}])]
            dirs += nxt
            frontier = nxt
        return dirs

    def _name_rows(self, q: FileQuery) -> Iterator[tuple[int, bytes, dict]]:
        """(parent, name, inode document) of every name below `under` (or of
        all names) matching `name_glob`, whose inode matches q: the names are
        read and joined with their inodes in aggregations of NAMES_BATCH
        documents per round trip, as the caller consumes them. Globs are
        matched here: names are binary. (query_names without `under` or
        `name_glob` starts from the inodes instead: _inode_names.)"""
        under, glob = getattr(q, "under", None), getattr(q, "name_glob", None)
        inode_match = {f"i.{k}": v for k, v in self._filter(q, paging=False).items()}
        join = [{"$lookup": {"from": "inodes", "localField": "ino", "foreignField": "_id", "as": "i"}},
                {"$match": inode_match}, {"$unwind": "$i"}]
        if under is None:
            batches = [[{"$match": {}}]]
        else:
            parents = self._subtree_dirs(under)
            batches = [[{"$match": {"parent": {"$in": parents[i:i + 1000]}}}] for i in range(0, len(parents), 1000)]
        for first in batches:
            for r in self.dentries.aggregate(first + join, batchSize=self.names_batch):
                if glob is not None and not fnmatch.fnmatchcase(r["name"], glob):
                    continue
                yield r["parent"], r["name"], r["i"]

    def _inode_names(self, q: FileQuery) -> Iterator[list[tuple[int, bytes, int]]]:
        """Lists of (parent, name, ino) of the inodes matching q, one list per
        batch of inodes: each batch's names are one {ino: {$in: ...}} read on
        the dentries' ino index. The inodes come from _inode_pages (states
        alone) or a cursor on the index the planner picks (one getMore per
        batch). Every read costs in proportion to its batch, never to the
        catalog. (Reading a dense batch's names as one range of the ino index
        instead of an $in measured no faster at 1M entries.)"""
        pages = self._inode_pages(q) if states_only(q) else self._inode_cursor(q)

        def names_of(inos: list[int]) -> list[tuple[int, bytes, int]]:
            with self._errors():
                names = self.dentries.find({"ino": {"$in": inos}}, {"_id": 0, "parent": 1, "name": 1, "ino": 1},
                                           batch_size=len(inos) * 2)
                return [(d["parent"], d["name"], d["ino"]) for d in names]
        # two pages' names read at once: their server reads overlap (10M entries, 2.5M archived paths:
        # 8.6 s warm / 9.6-10.4 s cold, against 10.3-11.4 / 9.7-10.9 s one at a time; bench/RESULTS.md,
        # "Third pass")
        with contextlib.closing(map_ahead(names_of, pages, NAMES_READERS)) as rows:
            yield from rows

    def _inode_pages(self, q: FileQuery) -> Iterator[list[int]]:
        """Numbers of the inodes in q's states (all, without), in increasing
        order, page by page: each page one query on the state_id index
        (state, _id, nlink, mode), which answers it alone (no inode document
        is read), starting after the last number of the one before: FIRST_NAMES,
        then names_batch. In number order the names that follow are read
        mostly in their storage order, which keeps a cold cache's reads
        sequential. No server cursor outlives a round trip."""
        f = self._filter(q, paging=False)
        f.setdefault("state", {"$in": [s.value for s in State]})
        last, size = 0, min(FIRST_NAMES, self.names_batch)
        while True:
            with self._errors():
                inos = [d["_id"] for d in self.inodes.find({**f, "_id": {"$gt": last}}, {"_id": 1})
                        .sort("_id", 1).limit(size).hint("state_id")]
            if not inos:
                return
            yield inos
            last, size = inos[-1], self.names_batch

    def _inode_cursor(self, q: FileQuery) -> Iterator[list[int]]:
        """Numbers of the inodes matching q, names_batch per getMore of one cursor."""
        with self._errors():
            cur = self.inodes.find(self._filter(q, paging=False), {"_id": 1}, batch_size=self.names_batch)
        try:
            while True:
                with self._errors():
                    inos = [d["_id"] for d in itertools.islice(cur, self.names_batch)]
                if not inos:
                    return
                yield inos
        finally:
            cur.close()

    def query(self, q: FileQuery) -> Iterator[Inode]:
        """Indexed find (with `under`/`name_glob`: the names below, joined
        with their inodes); rows_read counts the documents returned."""
        with self._errors():
            if self._by_name(q):
                seen = {}
                for _, _, doc in self._name_rows(q):
                    seen.setdefault(doc["_id"], doc)
                docs = [d for d in seen.values() if q.order_by_last_access or d["_id"] > q.after_ino]
                docs.sort(key=_order(q))
                docs = docs[:q.limit] if q.limit is not None else docs
            else:
                sort = [("last_access_ns", 1), ("_id", 1)] if q.order_by_last_access else [("_id", 1)]
                if q.limit is None:
                    # Everything is wanted: sorting here lets the planner pick the state_last_access_size_id
                    # or state_size index; a server-side sort by _id walks the whole _id index instead
                    # (1M documents examined for 10k candidates). With states, last access and size
                    # bounds, state_last_access_size_id tests the size on the key: only candidates are
                    # fetched. No hint: the planner's trial picks the index whose range holds the larger
                    # share of matches (a hint would walk the whole last-access range when a size bound
                    # is far narrower).
                    docs = list(self.inodes.find(self._filter(q)))
                    docs.sort(key=_order(q))
                else:
                    docs = list(self.inodes.find(self._filter(q)).sort(sort).limit(q.limit))
        self.rows_read += len(docs)
        for d in docs:
            yield inode_of(d)

    def _candidate_rows(self, q: FileQuery, state: State, cls: int, *, after: int | None = None,
                        equal: int | None = None, limit: int | None = None) -> list[Candidate]:
        """One find on the candidates index (hinted: its covered plan is the
        point): state and size class fixed, the last-access range in the
        index's order (no blocking sort), the index's fields only returned
        (PROJECTION_COVERED: no document read), exhausted in one reply."""
        f = self._filter(dataclasses.replace(q, states=(state,)), paging=False)
        f["size_class"] = cls
        la = f.setdefault("last_access_ns", {})
        if after is not None:
            la["$gt"] = after
        if equal is not None:
            la.clear()   # (the value came from a candidate: it is within the query's own bound)
            la["$eq"] = equal
        if not la:
            del f["last_access_ns"]
        with self._errors():
            cur = self.inodes.find(f, _CANDIDATE_PROJECTION, sort=[("last_access_ns", 1)],
                                   limit=limit or 0, batch_size=limit or 0).hint(CANDIDATES_INDEX[1])
            docs = list(cur)
        out = []
        for d in docs:
            try:
                values = _CANDIDATE_VALUES(d)
            except KeyError:   # a field an older tierfs never wrote (archive_copies before version 3)
                values = [d["_id"] if k == "ino" else d.get(k) for k in CANDIDATE_FIELDS]
            out.append(candidate_from_values(values))
        return out

    def list_dir(self, parent: int, xattr_names: Sequence[bytes] = ()) -> list[Listed]:
        """One aggregation: the directory's dentries joined with their inodes
        and the attributes asked for; sorted here, by name bytes (MongoDB
        orders binary values by length first)."""
        pipe: list[dict] = [{"$match": {"parent": parent}},
                            {"$lookup": {"from": "inodes", "localField": "ino", "foreignField": "_id", "as": "i"}}]
        if xattr_names:
            # localField/foreignField with a pipeline (MongoDB 5.0+), not a $expr match on a variable: the
            # join is an equality on xattrs' ino index, which a sharded cluster routes by its key
            pipe.append({"$lookup": {"from": "xattrs", "localField": "ino", "foreignField": "ino", "as": "x",
                                     "pipeline": [{"$match": {"name": {"$in": list(xattr_names)}}}]}})
        with self._errors():
            rows = list(self.dentries.aggregate(pipe))
        out = [Listed(bytes(r["name"]), inode_of(r["i"][0]), {bytes(x["name"]): bytes(x["value"]) for x in r.get("x", ())})
               for r in rows if r["i"]]
        out.sort(key=lambda e: (e.name, e.inode.ino))
        return out

    def query_names(self, q: FileQuery) -> Iterator[tuple[int, bytes, int]]:
        """(parent, name, ino) per name, streamed: a batch of NAMES_BATCH rows
        per round trip, each yielded before the next is read (rows_read counts
        the rows as they come). From the inodes (_inode_names), or with
        `under`/`name_glob` from the names (_name_rows)."""
        if not self._by_name(q):
            # (the next batches' round trips while the caller handles this one; with display.printable_lines,
            # `tierfs find` of 5% of 10M entries: 2.94 s warm instead of 3.35 s, 0.25 GB cache)
            with contextlib.closing(fetch_ahead(self._inode_names(q))) as batches:
                for rows in batches:
                    self.rows_read += len(rows)
                    yield from rows
            return
        it = self._name_rows(q)
        while True:
            with self._errors():
                rows = [(p, n, d["_id"]) for p, n, d in itertools.islice(it, self.names_batch)]
            if not rows:
                return
            self.rows_read += len(rows)
            yield from rows

    def names_of(self, inos: Iterable[int]) -> dict[int, tuple[int, bytes]]:
        """On the dentries' ino index, 1,000 inodes a query (find_one({ino})
        of parent_of takes the first in that index's order: so does this)."""
        inos = list(dict.fromkeys(inos))
        out: dict[int, tuple[int, bytes]] = {}
        with self._errors():
            for k in range(0, len(inos), 1000):
                for d in self.dentries.find({"ino": {"$in": inos[k:k + 1000]}}, {"_id": 0, "ino": 1, "parent": 1,
                                                                                  "name": 1}):
                    out.setdefault(d["ino"], (d["parent"], d["name"]))
        return out

    def xattrs_of(self, inos: Iterable[int], names: Iterable[bytes]) -> dict[int, dict[bytes, bytes]]:
        inos, names = list(dict.fromkeys(inos)), list(names)
        out: dict[int, dict[bytes, bytes]] = {}
        with self._errors():
            for k in range(0, len(inos), 1000):
                for d in self.xattrs.find({"ino": {"$in": inos[k:k + 1000]}, "name": {"$in": names}},
                                          {"_id": 0, "ino": 1, "name": 1, "value": 1}):
                    out.setdefault(d["ino"], {})[d["name"]] = d["value"]
        return out

    def with_active_jobs(self, inos: Iterable[int]) -> set[int]:
        inos = list(dict.fromkeys(inos))
        out: set[int] = set()
        with self._errors():
            for k in range(0, len(inos), 1000):
                out.update(d["ino"] for d in self.jobs_c.find({"ino": {"$in": inos[k:k + 1000]},
                                                               "state": {"$in": _ACTIVE}}, {"_id": 0, "ino": 1}))
        return out

    def paths_of(self, inos: Iterable[int], cache: dict[int, bytes] | None = None) -> dict[int, bytes]:
        """Names fetched level by level ({ino: {$in: ...}} on the ino index),
        directories' paths kept in `cache`."""
        cache = {} if cache is None else cache
        cache[ROOT_INO] = b""
        want = set(inos)
        names: dict[int, tuple[int, bytes]] = {}   # ino -> (parent, name)
        todo = [i for i in want if i not in cache]
        with self._errors():
            for _ in range(10000):
                if not todo:
                    break
                for i in range(0, len(todo), 1000):
                    for d in self.dentries.find({"ino": {"$in": todo[i:i + 1000]}}, {"ino": 1, "parent": 1, "name": 1}):
                        names.setdefault(d["ino"], (d["parent"], d["name"]))
                todo = list({p for p, _ in names.values() if p not in cache and p not in names})

        def resolve(ino: int) -> bytes | None:
            chain = []
            while ino not in cache:
                if ino not in names or len(chain) > 10000:
                    return None
                chain.append(ino)
                ino = names[ino][0]
            path = cache[ino]
            for i in reversed(chain):
                parent, name = names[i]
                path = path + b"/" + name if path else name
                if i not in want:
                    cache[i] = path  # a directory on the way
            return path
        out = {}
        for ino in want:
            p = cache[ino] if ino in cache else resolve(ino)
            if p is not None:
                out[ino] = p
        return out

    def count_by(self, q: FileQuery, by: str) -> dict:
        """From the running totals (totals()) when q is every live file and
        `by` a field they are kept per; else one $group aggregation over the
        matching inodes (each once)."""
        check_count_by(by)
        if totals_answer(q, by):
            return group_totals(self.totals(), by)
        out: dict = {}
        with self._errors():
            if self._by_name(q):
                seen = {}
                for _, _, doc in self._name_rows(q):
                    seen[doc["_id"]] = doc
                for d in seen.values():
                    n, b = out.get(d.get(by), (0, 0))
                    out[d.get(by)] = (n + 1, b + d["size"])
                return out
            for r in self.inodes.aggregate([{"$match": self._filter(q, paging=False)},
                                            {"$group": {"_id": f"${by}", "n": {"$sum": 1}, "b": {"$sum": "$size"}}}]):
                out[r["_id"]] = (r["n"], int(r["b"]))
        return out

    def tiers_in_use(self) -> set[str]:
        """distinct() on the tier_location / archive_location / tier_key indexes (a DISTINCT_SCAN:
        one index seek per value, not a read of every inode)."""
        with self._errors():
            out = {t for t in self.inodes.distinct("tier") if t}
            out |= {t for t in self.inodes.distinct("archive_tier") if t}
            out |= {t for d in self.inodes.find({"archive_copies": {"$type": "string"}}, {"archive_copies": 1})
                    for t, _ in further_copies(d["archive_copies"])}   # (the partial index archive_copies)
            out |= {t for d in self.jobs_c.find({"state": {"$in": [s.value for s in ACTIVE_JOB_STATES]},
                                                 "more_targets": {"$type": "string"}}, {"more_targets": 1})
                    for t in further_targets(d["more_targets"])}
            out |= {t for t in self.garbage_c.distinct("tier") if t}
            out |= {t for t in self.jobs_c.distinct("target_tier", {"state": {"$in": [s.value for s in ACTIVE_JOB_STATES]}}) if t}
        return out

    def stats(self) -> CatalogStats:
        st = CatalogStats()
        reg = {"nlink": {"$gt": 0}, "mode": {"$bitsAllSet": REG_SET, "$bitsAllClear": REG_CLEAR}}
        totals = self.totals()
        for by, out in (("state", st.by_state), ("tier", st.by_tier), ("archive_tier", st.by_archive)):
            out.update((k, v) for k, v in group_totals(totals, by).items() if k is not None)
        with self._errors():
            count_further_copies(st.by_archive, ((d.get("size"), d["archive_copies"]) for d in self.inodes.find(
                {**reg, "archive_copies": {"$type": "string"}}, {"size": 1, "archive_copies": 1})))
            for r in self.jobs_c.aggregate([{"$group": {"_id": {"s": "$state", "k": "$kind"}, "n": {"$sum": 1}}}]):
                st.jobs.setdefault(r["_id"]["s"], {})[r["_id"]["k"]] = r["n"]
        return st
