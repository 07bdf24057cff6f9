"""The job queue, mount sessions, settings and leases of the MongoDB
catalog: a mixin of catalog/mongo.py's MongoCatalog, which supplies the
client and its `app_name`, the collections, `_errors`, `_txn` and the
state of the transactions left open (`_left_open`, `_left_lock`,
`_kill_denied`). Each method's docstring says whether it is a
single-document atomic update or a transaction.
"""

from __future__ import annotations

import logging

import pymongo
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from .. import errors
from .base import (ACTIVE_JOB_STATES, JOB_PRIORITY, Job, JobKind, JobState, Session, check_owner, ended_by_commit,
                   now_ns)

ACTIVE = [s.value for s in ACTIVE_JOB_STATES]
log = logging.getLogger(__name__)

#: A transaction idle this long belongs to a client that stopped in the middle of it (cut off, or
#: killed): a live client sends its next operation within milliseconds (the slowest, a majority
#: commit over three members, 20-60 ms in the multi-host test bed).
ORPHAN_IDLE_S = 1.0
#: Longest the reaper spends finding and killing a dead mount's transactions (seconds).
KILL_DEADLINE_S = 3.0
#: Longest a call spends first killing this client's cut-off transactions (seconds): one quick command
#: when the server answers; while it does not, the call this precedes should fail as fast as before.
LEFT_OPEN_KILL_S = 1.0


def client_name(host: str, pid: int) -> str:
    """The application name of the MongoDB client of tierfs process `pid` on `host`: $currentOp shows
    it with each transaction, so a mount that reaps a dead session finds the ones its daemon left open
    (the session record has the same host and pid)."""
    return f"tierfs {host} {pid}"


def client_of(session_doc: dict) -> str:
    """client_name of the process a session document records."""
    return client_name(session_doc.get("host", ""), session_doc.get("pid", 0))


def end_job(jobs_c, job_id: int, now: int, *, match: dict | None = None, keep_session: bool = False,
            session=None) -> dict | None:
    """core.Txn.end_job on the jobs collection (in the transaction of
    `session`, else each update atomic alone); `match`: the job's filter
    (fencing). The job's document as it was, None if `match` found none."""
    done = {"state": JobState.DONE.value, "last_error": "", "updated_ns": now}
    if not keep_session:
        done["session"] = None
    doc = jobs_c.find_one_and_update(match or {"_id": job_id}, {"$set": done}, session=session)
    if doc is not None:
        jobs_c.update_many(
            {"ino": doc["ino"], "kind": doc["kind"], "state": JobState.FAILED.value, "_id": {"$lt": job_id}},
            {"$set": {"state": JobState.CANCELLED.value, "last_error": f"superseded by job {job_id}",
                      "updated_ns": now}},
            session=session)
    return doc


def job_of(doc: dict) -> Job:
    d = dict(doc)
    d["id"] = d.pop("_id")
    d["kind"] = JobKind(d["kind"])
    d["state"] = JobState(d["state"])
    return Job(**d)


def session_of(doc: dict) -> Session:
    d = dict(doc)
    d["id"] = d.pop("_id")
    return Session(**d)


class MongoJobs:
    """enqueue / claim / ... / sessions / reap / meta / leases."""

    def enqueue(self, ino, kind, *, target_tier=None, keep_online=False, cause="", uid=None,
                more_targets=None) -> tuple[Job, bool]:
        """Single-document insert; the partial unique index "one_active"
        (ino, kind while pending/running) makes coalescing atomic: when two
        mounts queue the same job at once, one insert fails and returns the
        other's job."""
        kind = JobKind(kind)
        with self._errors():
            for _ in range(10):
                doc = self.jobs_c.find_one({"ino": ino, "kind": kind.value, "state": {"$in": ACTIVE}})
                if doc is not None:
                    return job_of(doc), False
                t = now_ns()
                values = dict(_id=self._next("job"), ino=ino, kind=kind.value, state=JobState.PENDING.value,
                              priority=JOB_PRIORITY[kind], target_tier=target_tier, keep_online=keep_online,
                              cause=cause, session=None, attempts=0, not_before_ns=0, last_error="", dst_key=None,
                              created_ns=t, updated_ns=t, uid=uid, more_targets=more_targets)
                try:
                    self.jobs_c.insert_one(values)
                except DuplicateKeyError:
                    continue  # another mount queued it just now: return theirs
                return job_of(values), True
        raise errors.CatalogUnavailable(f"catalog {self.safe_url}: enqueue of inode {ino} kept racing")

    def claim(self, session, kinds=None, busy_tiers=(), *, tiers=None, skip=()) -> Job | None:
        """Single-document atomic find_one_and_update (pending -> running):
        two mounts never get the same job."""
        t = now_ns()
        filt: dict = {"state": JobState.PENDING.value, "not_before_ns": {"$lte": t}}
        if kinds is not None:
            filt["kind"] = {"$in": [JobKind(k).value for k in kinds]}
        target: dict = {}
        busy = list(busy_tiers)
        if busy:
            target["$nin"] = busy  # also matches null (no target)
        if tiers is not None:
            target["$in"] = [*tiers, None]
        if target:
            filt["target_tier"] = target
        skip = list(skip)
        if skip:
            filt["_id"] = {"$nin": skip}
        with self._errors():
            doc = self.jobs_c.find_one_and_update(
                filt, {"$set": {"state": JobState.RUNNING.value, "session": session, "updated_ns": t},
                       "$inc": {"attempts": 1}},
                sort=[("priority", 1), ("_id", 1)], return_document=ReturnDocument.AFTER)
        return job_of(doc) if doc else None

    def _job_filter(self, job_id, session) -> dict:
        """The job, and with `session` only while it runs under it (fencing: base.check_owner)."""
        if session is None:
            return {"_id": job_id}
        return {"_id": job_id, "state": JobState.RUNNING.value, "session": session}

    def _fenced(self, job_id, session, state: JobState | None = None) -> None:
        """A fenced update matched nothing: raise why (the job as it is now),
        unless it was finish_job(DONE) of a job its commit ended (ended_by_commit)."""
        doc = self.jobs_c.find_one({"_id": job_id}, {"state": 1, "session": 1})
        found = None if doc is None else (doc["state"], doc.get("session"))
        if state is not None and ended_by_commit(state, session, found):
            return
        check_owner(job_id, session, found)

    def update_job(self, job_id, changes, *, session=None) -> None:
        """Single-document update."""
        changes = {k: (v.value if isinstance(v, (JobKind, JobState)) else v) for k, v in changes.items()}
        with self._errors():
            r = self.jobs_c.update_one(self._job_filter(job_id, session), {"$set": dict(changes, updated_ns=now_ns())})
            if session is not None and r.matched_count == 0:
                self._fenced(job_id, session)

    def finish_job(self, job_id, state, error="", *, session=None) -> None:
        """Single-document update; for DONE, one update_many of the file's
        older failed jobs of the kind (each changes atomically)."""
        t = now_ns()
        state = JobState(state)
        with self._errors():
            if state == JobState.DONE:
                doc = end_job(self.jobs_c, job_id, t, match=self._job_filter(job_id, session))
            else:
                doc = self.jobs_c.find_one_and_update(self._job_filter(job_id, session), {"$set": {
                    "state": state.value, "session": None, "last_error": error, "updated_ns": t}})
            if doc is None and session is not None:
                self._fenced(job_id, session, state)

    def retry_job(self, job_id, error, delay_s, *, count=True, session=None) -> None:
        """Single-document update (back to pending, not before now + delay)."""
        t = now_ns()
        upd: dict = {"$set": {"state": JobState.PENDING.value, "session": None, "last_error": error,
                              "not_before_ns": t + int(delay_s * 1e9), "updated_ns": t}}
        if not count:
            upd["$inc"] = {"attempts": -1}   # claim() counted this run; it was a wait, not an attempt
        with self._errors():
            try:
                r = self.jobs_c.update_one(self._job_filter(job_id, session), upd)
            except DuplicateKeyError:
                # An operator retried a failed job while a new one is active: that one covers it.
                raise errors.Exists(f"job {job_id}: another job for the same file is already queued") from None
            if session is not None and r.matched_count == 0:
                self._fenced(job_id, session)

    def get_job(self, job_id) -> Job:
        with self._errors():
            doc = self.jobs_c.find_one({"_id": job_id})
        if doc is None:
            raise errors.NotFound(f"job {job_id}")
        return job_of(doc)

    def jobs(self, states=None, ino=None, limit=1000, newest_first=False) -> list[Job]:
        filt: dict = {}
        if states is not None:
            filt["state"] = {"$in": [JobState(x).value for x in states]}
        if ino is not None:
            filt["ino"] = ino
        with self._errors():
            order = [("_id", -1)] if newest_first else [("priority", 1), ("_id", 1)]
            return [job_of(d) for d in self.jobs_c.find(filt).sort(order).limit(limit)]

    def cancel_jobs(self, job_ids=None, *, kind=None) -> int:
        """One update_many; each job changes atomically (pending only)."""
        filt: dict = {"state": JobState.PENDING.value}
        if job_ids is not None:
            filt["_id"] = {"$in": list(job_ids)}
        if kind is not None:
            filt["kind"] = JobKind(kind).value
        with self._errors():
            return self.jobs_c.update_many(filt, {"$set": {"state": JobState.CANCELLED.value,
                                                           "last_error": "cancelled",
                                                           "updated_ns": now_ns()}}).modified_count

    # ---- sessions ----------------------------------------------------------
    def register_session(self, session: Session) -> None:
        d = dict(session.__dict__)
        d["_id"] = d.pop("id")
        with self._errors():
            self.sessions_c.insert_one(d)

    def heartbeat(self, session_id: str) -> bool:
        """Single-document update, of a live session only; then, the catalog answering, the end of
        transactions a network failure cut off (_end_left_open)."""
        with self._errors():
            r = self.sessions_c.update_one({"_id": session_id, "clean": False}, {"$set": {"heartbeat_ns": now_ns()}})
        if self._left_open:
            self._end_left_open()
        return r.matched_count == 1

    def _release_session(self, s, sid: str, error: str = "") -> None:
        """Its running jobs back to pending and its leases freed (in the caller's transaction)."""
        t = now_ns()
        upd = {"state": JobState.PENDING.value, "session": None, "updated_ns": t}
        if error:
            upd["last_error"] = error
        self.jobs_c.update_many({"session": sid, "state": JobState.RUNNING.value}, {"$set": upd}, session=s)
        self.leases.delete_many({"holder": sid}, session=s)
        self.open_files.delete_many({"session": sid}, session=s)

    def end_session(self, session_id: str, clean: bool = True) -> None:
        """Transaction: session marked + its jobs requeued + its leases freed. Then, when it was
        another process's (a daemon that died without unmounting, ended by the next mount or fsck),
        the transactions that process left open are killed (_kill_transactions_of)."""
        def fn(s):
            doc = self.sessions_c.find_one_and_update({"_id": session_id},
                                                      {"$set": {"clean": clean, "heartbeat_ns": now_ns()}},
                                                      {"host": 1, "pid": 1}, session=s)
            self._release_session(s, session_id)
            return doc
        doc = self._txn(fn)
        if doc is not None:
            name = client_of(doc)
            if name != self.app_name:
                self._kill_transactions_of(session_id, name)

    def sessions(self) -> list[Session]:
        with self._errors():
            return [session_of(d) for d in self.sessions_c.find().sort("started_ns", 1)]

    def reap_sessions(self, older_than_ns: int) -> list[str]:
        """One transaction per stale session: marked clean (only one mount
        wins it), its running jobs back to pending, its leases freed."""
        with self._errors():
            stale = list(self.sessions_c.find({"clean": False, "heartbeat_ns": {"$lt": older_than_ns}},
                                              {"_id": 1, "host": 1, "pid": 1}))
        reaped = []
        for d in stale:
            sid = d["_id"]

            def fn(s, sid=sid):
                r = self.sessions_c.update_one({"_id": sid, "clean": False, "heartbeat_ns": {"$lt": older_than_ns}},
                                               {"$set": {"clean": True}}, session=s)
                if r.modified_count != 1:
                    return False
                self._release_session(s, sid, f"session {sid} died")
                return True
            if self._txn(fn):
                reaped.append(sid)
                self._kill_transactions_of(sid, client_of(d))
        return reaped

    def _kill_transactions_of(self, sid: str, appname: str) -> None:
        """Abort the transactions the dead mount's client left open. A mount cut off in the middle of
        one leaves it open on the server until transactionLifetimeLimitSeconds (60 s by default), and
        it holds every document it wrote meanwhile: any other mount's transaction on one of them fails
        with WriteConflict (CI: the mount that took over a reaped session's archive could not switch
        the file for those 60 s; a totals document it wrote blocks every file counted there likewise).
        Best effort, after the reap committed: without the privilege to see or kill them (another
        database user's sessions), one warning, and they end at the server's limit."""
        idle = [{"$currentOp": {"idleSessions": True}},
                {"$match": {"type": "idleSession", "appName": appname,
                            "transaction.timeInactiveMicros": {"$gte": int(ORPHAN_IDLE_S * 1e6)}}},
                {"$project": {"lsid": 1}}]
        try:
            with pymongo.timeout(KILL_DEADLINE_S):
                lsids = [d["lsid"] for d in self.client.admin.aggregate(idle)]
                if lsids:
                    self.client.admin.command("killSessions", lsids)
        except PyMongoError as e:
            denied = isinstance(e, OperationFailure) and e.code == 13   # Unauthorized
            if not (denied and self._kill_denied):
                log.warning("ended session %s: could not abort the transactions its mount left open (%s); "
                            "they hold their documents until the server's transactionLifetimeLimitSeconds",
                            sid, e)
            self._kill_denied |= denied
            return
        if lsids:
            log.warning("ended session %s: aborted %d transaction(s) its mount (%s) left open", sid, len(lsids),
                        appname)

    def _remember_left_open(self, lsid: dict) -> None:
        """A transaction of this client that a network failure cut off (MongoCatalog._txn): the server
        may hold it open, and every document it wrote, until its lifetime limit; killed when the
        catalog answers again (_end_left_open). Its server session is not reused: the driver drops a
        session that saw a network error."""
        with self._left_lock:
            self._left_open.append(lsid)

    def _end_left_open(self) -> None:
        """Kill the server sessions of the transactions this client was cut off in the middle of, so
        that they stop holding their documents (this mount's next change to one of them would fail
        with WriteConflict, as would another mount's). Kept for the next try while the catalog does
        not answer."""
        with self._left_lock:
            lsids, self._left_open = self._left_open, []
        if not lsids:
            return
        try:
            with pymongo.timeout(LEFT_OPEN_KILL_S):
                self.client.admin.command("killSessions", lsids)
        except PyMongoError:
            with self._left_lock:
                self._left_open[:0] = lsids
            return
        log.info("aborted %d catalog transaction(s) a network failure had cut off", len(lsids))

    # ---- meta / leases -----------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._errors():
            d = self.meta.find_one({"_id": key})
        return d["value"] if d else None

    def set_meta(self, key: str, value: str) -> None:
        """Single-document upsert."""
        with self._errors():
            self.meta.update_one({"_id": key}, {"$set": {"value": value}}, upsert=True)

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Single-document upsert whose filter matches only a lease that is
        ours or expired; a live lease of another holder makes the upsert's
        insert fail on _id, so exactly one contender wins."""
        t = now_ns()
        with self._errors():
            try:
                self.leases.update_one({"_id": name, "$or": [{"holder": holder}, {"expires_ns": {"$lte": t}}]},
                                       {"$set": {"holder": holder, "expires_ns": t + int(ttl_s * 1e9)}}, upsert=True)
            except DuplicateKeyError:
                return False
        return True
