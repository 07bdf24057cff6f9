"""The `s3` and `s3-archive` tiers: objects in an S3 bucket (AWS or an
S3-compatible store such as MinIO), keyed by id under an optional prefix.

- put() streams: up to `multipart_threshold` bytes go in one PutObject,
  larger sources in a multipart upload of `multipart_chunksize` parts (the
  part size doubles every 1000 parts so a stream of unknown length stays
  under S3's 10,000-part limit). The object appears only when the upload
  completes, so a reader sees the old object, the new one or none; a failed
  upload is aborted. Every request carries Content-MD5, and the ETag S3
  returns is compared with the one computed locally from the same bytes
  that were hashed with sha256: that is what verify() relies on, so a fresh
  copy is verified without downloading it again (archive objects cannot be
  downloaded before a restore anyway).
- read() is a ranged GET of just the asked range, except for sequential
  readers: a read that starts where the previous one of that key ended
  fetches a growing window (up to `readahead`) kept for the next reads, so
  cat of a large file costs a few large GETs instead of one per 128 KiB.
  tierfs never rewrites an object key (new content gets a new key), and
  put()/delete() in this process drop the key's window, so a window is
  never stale. open_reader() streams and resumes a broken stream with a
  ranged GET pinned to the object's ETag.
- Every request has a deadline: botocore's connect/read timeouts bound one
  attempt, retry_call() bounds the retries (`max_attempts`, `deadline`);
  botocore's own retries are off so the two do not multiply. A tier that
  stays unreachable raises TierUnavailable naming the tier and endpoint.
- `s3-archive` writes GLACIER / DEEP_ARCHIVE / GLACIER_IR objects.
  prepare_restore() asks S3 for a temporary copy (RestoreObject with
  `restore_days` and `restore_tier`) and answers False until HEAD's
  x-amz-restore says it is ready; reads of a still-archived object raise
  errors.Pending (EAGAIN), never a bare EIO.
- An `s3` tier with `archive_storage_class` archives its files in place
  (tierfs/storage_class.py): set_storage_class() moves an object to another
  class with a CopyObject onto its own key (metadata kept; a multipart
  copy above 5 GiB), and prepare_restore() (RestoreObject, as above, with
  the tier's `restore_days` / `restore_tier`) makes a GLACIER or
  DEEP_ARCHIVE object readable before it moves back.

boto3 is imported on first use: loading a config that names an s3 tier
must not pay for it. The client is thread-safe and shared by all threads.
Credentials come from the config or boto3's chain (environment, profile,
instance role); they are never logged.
"""

from __future__ import annotations

import base64
import collections
import errno
import hashlib
import io
import logging
import threading
from typing import BinaryIO, Iterator

from .. import errors
from ..settings import MAX_PART, MIN_PART, S3_ARCHIVE_CLASSES as ARCHIVE_CLASSES, S3ArchiveTable, S3Table
from .base import CHUNK, RawReader, Tier, copy_stream, retry_call, sha256_stream

log = logging.getLogger(__name__)

MAX_PARTS = 10_000              # S3's limit on parts per upload
PARTS_PER_DOUBLING = 1000       # part size doubles after this many parts
SHA_META = "tierfs-sha256"      # user metadata key holding the sha256 of single-part objects
COPY_MAX = MAX_PART             # S3's largest CopyObject; larger objects are copied in parts
COPY_PART = 1024**3             # part size of such a copy (a 5 TiB object: 5120 parts)
RECENT_PUTS = 10_000            # how many put() results verify() remembers
WINDOWS = 16                    # read-ahead windows kept (one per key, least recently used dropped)
TEMP_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
              "ThrottlingException", "RequestLimitExceeded", "OperationAborted"}


def _code(e) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_temp_failure(e: BaseException) -> bool:
    """A failure worth retrying: network trouble, timeouts, throttling, 5xx."""
    from botocore import exceptions as bx
    if isinstance(e, bx.ClientError):
        return _code(e) in TEMP_CODES or _status(e) >= 500 or _status(e) == 429
    if isinstance(e, (bx.HTTPClientError, bx.ConnectionError, bx.IncompleteReadError, bx.ChecksumError)):
        return True
    return isinstance(e, (ConnectionError, TimeoutError))


class _Temporary(Exception):
    """A temporary failure, with a short cause, inside S3Tier._call's retries."""


def _why(e: BaseException | None) -> str:
    """A short cause for a temporary failure (botocore's repeat the URL)."""
    from botocore import exceptions as bx
    if isinstance(e, bx.EndpointConnectionError) and not isinstance(e, bx.ConnectTimeoutError):
        return "cannot connect to the endpoint"
    if isinstance(e, bx.ConnectTimeoutError):
        return "connecting timed out"
    if isinstance(e, bx.ReadTimeoutError):
        return "no answer within read_timeout"
    if isinstance(e, bx.ClientError):
        return f"{_code(e)} (HTTP {_status(e)})"
    return str(e) or type(e).__name__


class _Put:
    """What put() saw: the ETag computed from the bytes and their sha256."""
    __slots__ = ("etag", "sha256", "size")

    def __init__(self, etag: str, sha256: str, size: int):
        self.etag, self.sha256, self.size = etag, sha256, size


def _prefix(prefix: str) -> str:
    """The key prefix of a tier's objects: "" or "dir/" (a trailing slash, so
    prefix "a" does not also hold "ab/...")."""
    prefix = prefix.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


class S3Tier(Tier):
    kind = "s3"
    settings: S3Table

    @classmethod
    def object_store(cls, settings: S3Table) -> tuple[tuple, str] | None:
        return ("s3", settings.endpoint_url or "AWS S3", settings.bucket), _prefix(settings.prefix)

    def __init__(self, name: str, settings: S3Table | None = None, /, **options):
        super().__init__(name, settings, **options)
        s = self.settings
        self.bucket = s.bucket
        self.prefix = _prefix(s.prefix)
        self.endpoint_url = s.endpoint_url
        self.region = s.region
        self.storage_class = s.storage_class
        self.profile = s.profile
        self.addressing_style = s.addressing_style
        self._creds = {"access_key_id": s.access_key_id, "secret_access_key": s.secret_access_key,
                       "session_token": s.session_token}
        self.threshold = s.multipart_threshold
        self.chunksize = s.multipart_chunksize
        self.connect_timeout = s.connect_timeout
        self.read_timeout = s.read_timeout
        self.deadline = s.deadline
        self.max_attempts = s.max_attempts
        self.readahead = s.readahead
        self.archive_storage_class = s.archive_storage_class   # None: files are archived to other tiers only
        self.restore_days = s.restore_days
        self.restore_tier = s.restore_tier
        self._client = None
        self._lock = threading.Lock()
        self._windows = _Windows(self.readahead)
        self._puts: collections.OrderedDict[str, _Put] = collections.OrderedDict()
        #: where the tier is, for messages (never includes credentials)
        self.where = f"{self.endpoint_url or 'AWS S3'} bucket {self.bucket}" + \
            (f" prefix {self.prefix}" if self.prefix else "")

    def __repr__(self) -> str:
        return f"<{self.kind} tier {self.name!r} {self.where}>"

    # ---- plumbing ------------------------------------------------------------
    @property
    def client(self):
        """The boto3 S3 client, made on first use (thread-safe)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self):
        import boto3
        from botocore.config import Config
        from botocore.exceptions import ProfileNotFound
        kw = {}
        if self._creds["access_key_id"]:
            kw = dict(aws_access_key_id=self._creds["access_key_id"],
                      aws_secret_access_key=self._creds["secret_access_key"],
                      aws_session_token=self._creds["session_token"] or None)
        try:
            session = boto3.session.Session(profile_name=self.profile, **kw)
        except ProfileNotFound as e:
            raise errors.ConfigError(f"tiers.{self.name}.profile: {e}") from None
        region = self.region or session.region_name or "us-east-1"
        cfg = Config(region_name=region, connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                     retries={"total_max_attempts": 1, "mode": "standard"},  # retry_call retries
                     max_pool_connections=16, s3={"addressing_style": self.addressing_style})
        return session.client("s3", endpoint_url=self.endpoint_url, config=cfg)

    def _k(self, key: str) -> str:
        if not key:
            raise errors.Invalid("empty object key")
        return self.prefix + key

    def _call(self, what: str, key: str | None, fn):
        """Run one request with retries and a deadline; map S3's answers to
        tierfs errors (ObjectMissing, Pending, TierUnavailable, EIO)."""
        from botocore import exceptions as bx
        label = f"tier {self.name} ({self.where}): {what}" + (f" {key}" if key else "")

        def attempt():
            try:
                return fn()
            except Exception as e:
                if is_temp_failure(e):
                    raise _Temporary(_why(e)) from e
                raise
        # Callers log what this raises: no log line here, one per failure.
        try:
            return retry_call(attempt, what=label, is_temp=lambda e: isinstance(e, _Temporary),
                              deadline_s=self.deadline, max_attempts=self.max_attempts)
        except bx.ClientError as e:
            raise self._client_error(e, label, key) from e
        except (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError) as e:
            raise errors.TierUnavailable(f"{label}: no usable credentials ({e})") from e

    def _client_error(self, e, label: str, key: str | None) -> errors.TierfsError:
        code, status = _code(e), _status(e)
        msg = e.response.get("Error", {}).get("Message") or code
        if code in ("NoSuchKey", "NotFound") or (status == 404 and code != "NoSuchBucket"):
            return errors.ObjectMissing(f"tier {self.name}: object {key} is missing")
        if code in ("InvalidObjectState", "ObjectNotInActiveTierError"):
            return errors.Pending(f"tier {self.name}: object {key} is in an archive storage class "
                                  "and must be restored before it can be read")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or status == 403:
            return errors.TierfsError(f"{label}: access denied ({code}); check the tier's credentials "
                                      "and the bucket policy")
        if code == "PreconditionFailed":   # a resumed read found another object under the key
            return errors.TierfsError(f"tier {self.name}: object {key} changed while being read")
        if code == "NoSuchBucket":
            return errors.TierfsError(f"{label}: bucket {self.bucket} does not exist")
        return errors.TierfsError(f"{label}: {msg} ({code}, HTTP {status})")

    def _remember(self, key: str, put: _Put | None) -> None:
        with self._lock:
            self._puts.pop(key, None)
            if put is not None:
                self._puts[key] = put
                while len(self._puts) > RECENT_PUTS:
                    self._puts.popitem(last=False)

    def _recent(self, key: str) -> _Put | None:
        with self._lock:
            return self._puts.get(key)

    # ---- the Tier interface ----------------------------------------------------
    def check(self) -> None:
        from botocore.exceptions import ClientError
        try:
            self._call("check bucket", None, lambda: self.client.head_bucket(Bucket=self.bucket))
        except errors.TierUnavailable:
            raise
        except errors.TierfsError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError) and _status(cause) == 404:
                raise errors.ConfigError(f"tiers.{self.name}.bucket: bucket {self.bucket!r} does not exist "
                                         f"at {self.endpoint_url or 'AWS S3'}") from None
            raise errors.ConfigError(f"tiers.{self.name}: {e}") from None

    def put(self, key: str, src: BinaryIO) -> int:
        k = self._k(key)
        self._remember(key, None)
        self._windows.drop(key)
        first = _read_full(src, self.threshold + 1)
        if len(first) <= self.threshold:
            sha = hashlib.sha256(first).hexdigest()
            md5 = hashlib.md5(first)
            resp = self._call("put", key, lambda: self.client.put_object(
                Bucket=self.bucket, Key=k, Body=first, StorageClass=self.storage_class,
                ContentMD5=base64.b64encode(md5.digest()).decode(), Metadata={SHA_META: sha}))
            self._check_etag(key, resp.get("ETag"), md5.hexdigest(), sha, len(first))
            return len(first)
        return self._put_multipart(key, k, first, src)

    def _put_multipart(self, key: str, k: str, first: bytes, src: BinaryIO) -> int:
        up = self._call("start multipart upload of", key, lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=k, StorageClass=self.storage_class))
        upload_id = up["UploadId"]
        sha = hashlib.sha256()
        digests: list[bytes] = []
        parts = []
        total = 0
        try:
            for n, data in enumerate(_parts(first, src, self.chunksize), start=1):
                if n > MAX_PARTS:
                    raise errors.TierfsError(f"tier {self.name}: object {key} needs more than {MAX_PARTS} parts",
                                             err=errno.EFBIG)
                sha.update(data)
                md5 = hashlib.md5(data).digest()
                resp = self._call(f"upload part {n} of", key, lambda: self.client.upload_part(
                    Bucket=self.bucket, Key=k, UploadId=upload_id, PartNumber=n, Body=data,
                    ContentMD5=base64.b64encode(md5).decode()))
                digests.append(md5)
                parts.append({"PartNumber": n, "ETag": resp["ETag"]})
                total += len(data)
            etag = hashlib.md5(b"".join(digests)).hexdigest() + f"-{len(digests)}"
            try:
                resp = self._call("complete multipart upload of", key, lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=k, UploadId=upload_id, MultipartUpload={"Parts": parts}))
            except errors.ObjectMissing:
                # NoSuchUpload: a retry after an answer that got lost; done if the object is ours
                head = self._head(key)
                if head is None or str(head.get("ETag", "")).strip('"') != etag:
                    raise
                resp = head
        except BaseException:
            try:
                self._call("abort multipart upload of", key, lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=k, UploadId=upload_id))
            except Exception as e:  # noqa: BLE001 - the original error matters more
                log.warning("tier %s: could not abort the upload of %s (%s); a bucket lifecycle rule "
                            "for incomplete multipart uploads cleans it up", self.name, key, e)
            raise
        self._check_etag(key, resp.get("ETag"), etag, sha.hexdigest(), total)
        log.debug("tier %s: %s stored in %d parts, %d bytes", self.name, key, len(parts), total)
        return total

    def _check_etag(self, key: str, got: str | None, want: str, sha: str, size: int) -> None:
        """Remember the put when S3's ETag is the one computed here; an ETag
        that is not an MD5 (SSE-KMS, some S3-compatibles) leaves verify()
        to read the object back."""
        got = (got or "").strip('"')
        if got == want:
            self._remember(key, _Put(want, sha, size))
        else:
            log.info("tier %s: ETag of %s is %r, not the local %r (encrypted bucket or a store with other "
                     "ETags); verification will read it back", self.name, key, got, want)

    def open_reader(self, key: str) -> BinaryIO:
        self.reads += 1
        k = self._k(key)
        resp = self._call("read", key, lambda: self.client.get_object(Bucket=self.bucket, Key=k))
        return _ObjectReader(self, key, resp)

    def read(self, key: str, offset: int, size: int) -> bytes:
        self.reads += 1
        if size <= 0:
            return b""
        return self._windows.read(key, offset, size, self._get_range)

    def _get_range(self, key: str, offset: int, size: int) -> bytes:
        """One ranged GET (short or empty at the object's end)."""
        k = self._k(key)
        rng = f"bytes={offset}-{offset + size - 1}"

        def get():
            from botocore.exceptions import ClientError
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=k, Range=rng)
            except ClientError as e:
                if _code(e) == "InvalidRange":   # at or past the end
                    return b""
                raise
            with resp["Body"] as body:
                return body.read()
        data = self._call("read range of", key, get)
        return data[:size]

    def _head(self, key: str) -> dict | None:
        k = self._k(key)
        try:
            return self._call("stat", key, lambda: self.client.head_object(Bucket=self.bucket, Key=k))
        except errors.ObjectMissing:
            return None

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def delete(self, key: str) -> None:
        k = self._k(key)
        self._remember(key, None)
        self._windows.drop(key)
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=k))

    def keys(self) -> Iterator[str]:
        token = None
        while True:
            kw = dict(Bucket=self.bucket, Prefix=self.prefix)
            if token:
                kw["ContinuationToken"] = token
            page = self._call("list", None, lambda: self.client.list_objects_v2(**kw))
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix):]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def verify(self, key: str, sha256: str, size: int) -> bool:
        head = self._head(key)
        if head is None or int(head["ContentLength"]) != size:
            return False
        seen = self._recent(key)
        if seen is not None and seen.etag == str(head.get("ETag", "")).strip('"'):
            # S3 computed this ETag from the bytes it stores; put() computed
            # the same ETag and the sha256 from the same bytes.
            return seen.sha256 == sha256 and seen.size == size
        if not self._readable(head):
            stored = (head.get("Metadata") or {}).get(SHA_META)
            if stored:
                return stored == sha256
            raise errors.TierfsError(f"tier {self.name}: object {key} cannot be verified before a restore")
        with self.open_reader(key) as r:
            got, n = sha256_stream(r)
        return got == sha256 and n == size

    def _readable(self, head: dict) -> bool:
        """GET works on this object now (not archived, or restored)."""
        # ArchiveStatus: an INTELLIGENT_TIERING object in one of its opt-in archive access tiers
        if head.get("StorageClass", "STANDARD") not in ARCHIVE_CLASSES and not head.get("ArchiveStatus"):
            return True
        return 'ongoing-request="false"' in (head.get("Restore") or "")

    # ---- restores, and archiving in place (archive_storage_class) -------------
    def prepare_restore(self, key: str) -> bool:
        """True when the object can be read now; otherwise make sure a
        restore is running and answer False (the job polls again later)."""
        head = self._head(key)
        if head is None:
            raise errors.ObjectMissing(f"tier {self.name}: object {key} is missing")
        if self._readable(head):
            return True
        if 'ongoing-request="true"' in (head.get("Restore") or ""):
            log.debug("tier %s: restore of %s still running", self.name, key)
            return False
        self._request_restore(key, head)
        head = self._head(key)   # some stores (and moto) restore at once
        return head is not None and self._readable(head)

    def _request_restore(self, key: str, head: dict) -> None:
        from botocore.exceptions import ClientError
        k = self._k(key)
        # An INTELLIGENT_TIERING object comes back to its frequent access tier for good: S3 takes no Days
        days = {} if head.get("StorageClass") == "INTELLIGENT_TIERING" else {"Days": self.restore_days}

        def restore():
            tier = self.restore_tier
            while True:
                try:
                    self.client.restore_object(Bucket=self.bucket, Key=k, RestoreRequest={
                        **days, "GlacierJobParameters": {"Tier": tier}})
                    return tier
                except ClientError as e:
                    if _code(e) == "RestoreAlreadyInProgress":   # 409: asked already, still running
                        return None
                    if _code(e) == "GlacierExpeditedRetrievalNotAvailable" and tier == "Expedited":
                        log.warning("tier %s: no Expedited capacity for %s; asking for a Standard restore",
                                    self.name, key)
                        tier = "Standard"
                        continue
                    raise

        tier = self._call("request restore of", key, restore)
        if tier is not None:
            self.restores += 1
            log.info("tier %s: restore of %s requested (%s, %d days)", self.name, key, tier, self.restore_days)

    def storage_class_of(self, key: str) -> str:
        """The object's storage class now (ObjectMissing if it is gone)."""
        head = self._head(key)
        if head is None:
            raise errors.ObjectMissing(f"tier {self.name}: object {key} is missing")
        return head.get("StorageClass") or "STANDARD"   # S3 leaves STANDARD out of HEAD's answer

    def set_storage_class(self, key: str, storage_class: str) -> bool:
        """Move the object to `storage_class` in place: a CopyObject onto the
        same key (a multipart copy above S3's 5 GiB CopyObject limit), its
        metadata kept. False when it is in that class already (S3 refuses a
        copy onto itself that changes nothing). An object of an archive class
        must be restored first (errors.Pending otherwise)."""
        head = self._head(key)
        if head is None:
            raise errors.ObjectMissing(f"tier {self.name}: object {key} is missing")
        if (head.get("StorageClass") or "STANDARD") == storage_class:
            return False
        k = self._k(key)
        self._remember(key, None)   # a new object under the key: the put's ETag no longer vouches for it
        self._windows.drop(key)
        src = {"Bucket": self.bucket, "Key": k}
        size = int(head["ContentLength"])
        try:
            if size <= COPY_MAX:
                self._call(f"change the storage class to {storage_class} of", key, lambda: self.client.copy_object(
                    Bucket=self.bucket, Key=k, CopySource=src, CopySourceIfMatch=head["ETag"],
                    StorageClass=storage_class, MetadataDirective="COPY"))
            else:
                self._copy_multipart(key, k, head, storage_class)
        except errors.TierfsError:
            # A retry whose first attempt went through (its answer lost) finds a new ETag: done all the same.
            now = self._head(key)
            if now is None or (now.get("StorageClass") or "STANDARD") != storage_class \
                    or int(now["ContentLength"]) != size:
                raise
        log.info("tier %s: %s is %s now (was %s)", self.name, key, storage_class, head.get("StorageClass") or "STANDARD")
        return True

    def _copy_multipart(self, key: str, k: str, head: dict, storage_class: str) -> None:
        """set_storage_class() of an object above COPY_MAX: UploadPartCopy of
        ranges of the object itself (pinned to its ETag), then complete."""
        size = int(head["ContentLength"])
        part = max(self.chunksize, -(-size // MAX_PARTS), COPY_PART)
        up = self._call("start multipart copy of", key, lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=k, StorageClass=storage_class, Metadata=head.get("Metadata") or {},
            **({"ContentType": head["ContentType"]} if head.get("ContentType") else {})))
        upload_id, parts = up["UploadId"], []
        try:
            for n, off in enumerate(range(0, size, part), start=1):
                rng = f"bytes={off}-{min(off + part, size) - 1}"
                resp = self._call(f"copy part {n} of", key, lambda: self.client.upload_part_copy(
                    Bucket=self.bucket, Key=k, UploadId=upload_id, PartNumber=n, CopySourceRange=rng,
                    CopySource={"Bucket": self.bucket, "Key": k}, CopySourceIfMatch=head["ETag"]))
                parts.append({"PartNumber": n, "ETag": resp["CopyPartResult"]["ETag"]})
            self._call("complete multipart copy of", key, lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=k, UploadId=upload_id, MultipartUpload={"Parts": parts}))
        except BaseException:
            try:
                self._call("abort multipart copy of", key, lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=k, UploadId=upload_id))
            except Exception as e:  # noqa: BLE001 - the original error matters more
                log.warning("tier %s: could not abort the copy of %s (%s)", self.name, key, e)
            raise

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


class S3ArchiveTier(S3Tier):
    """Archive storage classes: a restore (RestoreObject) precedes reads."""
    kind = "s3-archive"
    archive = True
    settings: S3ArchiveTable


class _ObjectReader(RawReader):
    """The body of a GET as a stream; a connection that breaks mid-way is
    resumed with a ranged GET pinned to the same ETag (bounded attempts)."""

    def __init__(self, tier: S3Tier, key: str, resp: dict):
        super().__init__()
        self.tier, self.key = tier, key
        self.body = resp["Body"]
        self.etag = resp.get("ETag")
        self.length = int(resp.get("ContentLength") or 0)
        self.pos = 0
        self.resumes = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:   # in pieces, so a broken stream resumes where it broke
            out = bytearray()
            copy_stream(self, out.extend, CHUNK * 8)
            return bytes(out)
        while True:
            try:
                data = self.body.read(n)
            except Exception as e:  # noqa: BLE001 - classified
                if not is_temp_failure(e):
                    raise
                if self.resumes >= self.tier.max_attempts:
                    raise errors.TierUnavailable(f"tier {self.tier.name} ({self.tier.where}): reading {self.key}: "
                                                 f"{_why(e)} (gave up after {self.resumes} resumes)") from e
                self._resume(e)
                continue
            self.pos += len(data)
            return data

    def readall(self) -> bytes:
        return self.read(-1)

    def _resume(self, why: BaseException) -> None:
        self.resumes += 1
        log.info("tier %s: stream of %s broke at byte %d (%s); resuming", self.tier.name, self.key, self.pos, why)
        try:
            self.body.close()
        except Exception:  # noqa: BLE001
            pass
        if self.pos >= self.length:
            self.body = io.BytesIO(b"")
            return
        k = self.tier._k(self.key)
        kw = dict(Bucket=self.tier.bucket, Key=k, Range=f"bytes={self.pos}-")
        if self.etag:
            kw["IfMatch"] = self.etag
        resp = self.tier._call("resume read of", self.key, lambda: self.tier.client.get_object(**kw))
        self.body = resp["Body"]

    def close(self) -> None:
        try:
            self.body.close()
        finally:
            super().close()


class _Fetch:
    """A GET in flight (or just done) that concurrent reads can wait for."""
    __slots__ = ("start", "end", "done", "data")

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end
        self.done = threading.Event()
        self.data: bytes | None = None   # set on success


class _Window:
    """The bytes last fetched for one key and how its reader moves."""
    __slots__ = ("start", "data", "eof", "next_off", "ahead", "fetching")

    def __init__(self):
        self.start = 0              # object offset of data[0]
        self.data = b""             # fetched bytes kept for the next reads
        self.eof = False            # data reaches the object's end
        self.next_off = 0           # where the next sequential read would start
        self.ahead = 0              # current read-ahead size (doubles while sequential)
        self.fetching: list[_Fetch] = []   # GETs in flight

    def covers(self, off: int, size: int) -> bool:
        return self.start <= off and (off + size <= self.start + len(self.data) or self.eof)


class _Windows:
    """Read-ahead for sequential readers, one window per key (see module doc).

    The kernel sends the reads of one file in parallel (its own read-ahead),
    so "sequential" means: starting between the previous read's end and
    one read-ahead beyond the furthest byte fetched or being fetched. A read inside a GET in
    flight waits for it instead of fetching the same bytes again."""

    def __init__(self, max_ahead: int):
        self.max_ahead = max_ahead
        self.lock = threading.Lock()
        self.by_key: collections.OrderedDict[str, _Window] = collections.OrderedDict()

    def drop(self, key: str) -> None:
        with self.lock:
            self.by_key.pop(key, None)

    def _window(self, key: str) -> _Window:
        w = self.by_key.get(key)
        if w is None:
            w = self.by_key[key] = _Window()
            while len(self.by_key) > WINDOWS:
                self.by_key.popitem(last=False)
        self.by_key.move_to_end(key)
        return w

    def read(self, key: str, off: int, size: int, fetch) -> bytes:
        if not self.max_ahead:
            return fetch(key, off, size)
        with self.lock:
            w = self._window(key)
            if w.covers(off, size):
                w.next_off = max(w.next_off, off + size)
                return w.data[off - w.start: off - w.start + size]
            f = next((f for f in w.fetching if f.start <= off < f.end), None)
            if f is None:
                frontier = max([w.start + len(w.data)] + [f.end for f in w.fetching])
                if w.next_off <= off <= max(frontier, w.next_off) + w.ahead:
                    w.ahead = min(self.max_ahead, max(2 * w.ahead, 4 * size))
                else:
                    w.ahead = 0     # a random read: fetch just what was asked
                # stop where bytes already fetched or in flight begin (no double fetch)
                above = [x.start for x in w.fetching if x.start > off] + ([w.start] if w.start > off else [])
                f = _Fetch(off, max(off + size, min([off + w.ahead] + above)))
                w.fetching.append(f)
                mine = True
            else:
                mine = False
        if not mine:
            f.done.wait(60)
            if f.data is not None and f.start <= off and (off + size <= f.start + len(f.data)
                                                          or len(f.data) < f.end - f.start):
                with self.lock:
                    w.next_off = max(w.next_off, off + size)
                return f.data[off - f.start: off - f.start + size]
            return self.read(key, off, size, fetch) if f.data is not None else fetch(key, off, size)
        try:
            f.data = fetch(key, off, f.end - off)
        finally:
            with self.lock:
                w.fetching.remove(f)
            f.done.set()
        with self.lock:
            self._keep(w, f)
            w.next_off = max(w.next_off, off + size)
        return f.data[:size]

    def _keep(self, w: _Window, f: _Fetch) -> None:
        """Make f's bytes the window, joined to the old one when they touch
        (at most 2 x max_ahead bytes kept)."""
        data, start = f.data, f.start
        eof = len(data) < f.end - f.start
        if start == w.start + len(w.data) and w.data:
            data, start = w.data + data, w.start
        elif start + len(data) == w.start and not eof:
            data, eof = data + w.data, w.eof
        extra = len(data) - 2 * self.max_ahead
        if extra > 0:
            data, start = data[extra:], start + extra
        w.start, w.data, w.eof = start, data, eof


def _read_full(src: BinaryIO, n: int) -> bytes:
    """Up to n bytes from src (fewer only at its end)."""
    buf = bytearray()
    copy_stream(src, buf.extend, limit=n)
    return bytes(buf)


def _parts(first: bytes, src: BinaryIO, chunksize: int) -> Iterator[bytes]:
    """The upload's parts: `first` (already read) then the rest of src, cut
    into parts of chunksize, doubling every PARTS_PER_DOUBLING parts."""
    buf = bytearray(first)
    eof = False
    n = 0
    while True:
        want = min(MAX_PART, chunksize << (n // PARTS_PER_DOUBLING))
        if len(buf) < want and not eof:
            need = want - len(buf)
            eof = copy_stream(src, buf.extend, limit=need) < need
        if not buf:
            return
        part = bytes(buf[:want])
        del buf[:want]
        n += 1
        yield part
        if eof and not buf:
            return
