"""Typed settings: the TOML file's tables as pydantic models.

One model per table: `Settings` (the top level), one per tier kind
(discriminated by `kind`) and `PolicyTable` (a [[policy]] table's keys and
value types; tierfs/policy/rules.py checks what depends on the rest of the
config, e.g. that `to` names an archive tier). Each default is written once,
here. Durations ("1h", "30s", 90) and sizes ("10G", "512MiB", 4096) are one
annotated type each (`Duration`, `Size`), accepted the same everywhere.

Validation errors become errors.ConfigError in the one-line style of the CLI
(exit code 6), naming the full key path: `tiers.cold.timout: unknown key
(did you mean 'timeout'?)`, `block_timeout: expected a duration like '90d',
'12h' or '30s', got 'soon'`.

Why pydantic (not msgspec): pydantic v2 has tagged unions whose errors carry
the whole location (`tiers`, NAME, kind, key), before-validators for our
"90d"/"10GiB" forms, and it is already installed with the test extras (moto
depends on it), so no new wheel reaches test machines.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from . import errors
from .units import duration_value, size_value

MiB = 1024**2


# ---- value types ---------------------------------------------------------------------
def _checked(test: Callable[[Any], bool], expected: str) -> BeforeValidator:
    """A before-validator refusing values failing `test` with `expected a ..., got V`."""
    def check(v):
        if not test(v):
            raise ValueError(f"expected {expected}, got {v!r}")
        return v
    return BeforeValidator(check)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# units' parsers raise ValueError saying the expected form; validate() adds the key path.
#: seconds: "90d", "12h", "30m", "1.5s" or a number of seconds
Duration = Annotated[float, BeforeValidator(duration_value)]
#: bytes: "10GB", "512MiB" or a number of bytes
Size = Annotated[int, BeforeValidator(size_value)]
Text = Annotated[str, _checked(lambda v: isinstance(v, str) and bool(v), "a non-empty string")]
Flag = Annotated[bool, _checked(lambda v: isinstance(v, bool), "true or false")]
Count = Annotated[int, _checked(lambda v: _int(v) and 1 <= v <= 1_000_000, "a positive integer")]
Fraction = Annotated[float, _checked(lambda v: _number(v) and 0 < v <= 1, "a fraction in (0, 1]")]


def _names(v):
    v = [v] if isinstance(v, (str, int)) and not isinstance(v, bool) else v
    if not isinstance(v, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
        raise ValueError(f"expected a name, an id or a list of them, got {v!r}")
    return v


def _argv(v):
    """A command line split like a shell would (quotes, backslashes; nothing
    substituted), or a list of words: an argv, run without a shell."""
    import shlex
    try:
        argv = shlex.split(v) if isinstance(v, str) else v
    except ValueError as e:   # "No closing quotation"
        raise ValueError(f"cannot split {v!r} into words like a shell: {str(e).lower()}") from None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise ValueError(f"expected a command line or a list of words, got {v!r}")
    return argv


def split_listen(v: str) -> tuple[str, int]:
    """"HOST:PORT" (an IPv6 host in brackets: "[::1]:9108") -> (host, port);
    ValueError saying the expected form."""
    host, colon, port = v.rpartition(":") if isinstance(v, str) else ("", "", "")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or any(c in host for c in "[]/ "):
        raise ValueError(f"expected HOST:PORT like '127.0.0.1:9108' (port 1-65535), got {v!r}")
    return host, int(port)


def _listen(v):
    split_listen(v)
    return v


#: an address to listen on: "127.0.0.1:9108", "[::1]:9108", "metrics.lab:9108"
Listen = Annotated[str, BeforeValidator(_listen)]
#: a command run without a shell: "notify-send 'restore done'" or ["mail", "-s", "done", "ops"]
Argv = Annotated[list[str], BeforeValidator(_argv)]
#: user or group names or ids, one or a list
Names = Annotated[list[Any], BeforeValidator(_names)]


def _range(lo: int, hi: int, what: str) -> BeforeValidator:
    return _checked(lambda v: _int(v) and lo <= v <= hi, what)


class Table(BaseModel):
    """A TOML table: unknown keys are refused, types are not coerced ("2" is no integer)."""
    model_config = ConfigDict(extra="forbid", strict=True)


class Invalid(ValueError):
    """A check across keys, reported at `key` of the table it is in."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


# ---- tiers ----------------------------------------------------------------------------
class TierTable(Table):
    """Keys every tier kind accepts."""
    kind: str
    allow_users: Names | None = Field(None, description="users who may place files on this tier (default: everyone)")
    allow_groups: Names | None = Field(None, description="groups who may place files on this tier")
    high_watermark: Fraction | None = Field(None, description="online tiers: usage that starts a watermark run")
    low_watermark: Fraction | None = Field(None, description="online tiers: usage a watermark run stops at")


#: the largest stub_bytes: stubs live in the catalog (one row per archived file), so a million archived
#: files with 1 MiB stubs already take 1 TB of catalog
MAX_STUB = MiB


def _stub_size(v: int) -> int:
    if not 0 <= v <= MAX_STUB:
        raise ValueError(f"expected a size from 0 to 1MiB (stubs are kept in the catalog), got {v}")
    return v


#: bytes kept online, at most MAX_STUB
StubSize = Annotated[Size, AfterValidator(_stub_size)]


class ArchiveTable(TierTable):
    """Keys every archive tier kind accepts."""
    stub_bytes: StubSize = Field(0, description="first bytes of an archived file kept online (partial-state "
                                 "files: reads within them need no restore); at most 1MiB")


class DiskTable(TierTable):
    kind: Literal["disk"]
    path: Text = Field(description="directory holding objects/ and tmp/")
    release_originals: Flag = Field(False, description="files imported in place: their originals are deleted when "
                                    "their file is released after its archive copy is verified (a restore puts "
                                    "them back at their path); false: their release is refused")


class VaultTable(ArchiveTable):
    kind: Literal["vault"]
    path: Text = Field(description="directory holding the archive copies")
    restore_delay: Duration = Field(0.0, description="wait before every restore read (imitates a slow medium)")
    archive_delay: Duration = Field(0.0, description="wait before every archive write")


class CommandTable(ArchiveTable):
    kind: Literal["command"]
    archive_command: Text | None = Field(
        None, description="stores {path} as {key} (exit 0 done, 75 pending; required without archive_batch_command)")
    restore_command: Text | None = Field(
        None, description="writes object {key} to {path} (required without restore_batch_command)")
    delete_command: Text | None = Field(None, description="removes {key} (default: the copy is only forgotten)")
    staging: Text | None = Field(None, description="staging directory (default: state_dir/command-NAME)")
    timeout: Duration = Field(3600.0, description="longest run of one command")
    restore_batch_command: Text | None = Field(
        None, description="restores the objects listed in {list} in one run (default: restore_command per object)")
    archive_batch_command: Text | None = Field(
        None, description="stores the objects listed in {list} in one run (default: archive_command per object)")
    batch_max_files: Count = Field(100, description="most objects in one batch")
    batch_max_bytes: Size | None = Field(None, description="most bytes in one batch (default: no limit)")
    batch_wait: Duration = Field(30.0, description="how long a batch gathers requests before it runs")

    @model_validator(mode="after")
    def _commands(self):
        for one, many in (("archive_command", "archive_batch_command"), ("restore_command", "restore_batch_command")):
            if getattr(self, one) is None and getattr(self, many) is None:
                raise Invalid(one, f"required (or {many})")
        for k in ("restore_batch_command", "archive_batch_command"):
            if getattr(self, k) is not None and "{list}" not in getattr(self, k):
                raise Invalid(k, "must name the list of objects with {list}")
        return self


S3_ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")   # need a RestoreObject before GET
#: classes an s3 tier may move its own objects to when it archives them in place (archive_storage_class);
#: the others are read at once (no RestoreObject)
S3_IN_PLACE_CLASSES = S3_ARCHIVE_CLASSES + ("GLACIER_IR", "INTELLIGENT_TIERING", "STANDARD_IA", "ONEZONE_IA")
MIN_PART, MAX_PART = 5 * MiB, 5 * 1024**3          # S3's smallest (but the last) and largest part
_RESTORE_TIERS = {t.lower(): t for t in ("Expedited", "Standard", "Bulk")}


def _restore_tier(v: str) -> str:
    if v.lower() not in _RESTORE_TIERS:
        raise ValueError(f"expected Expedited, Standard or Bulk, got {v!r}")
    return _RESTORE_TIERS[v.lower()]


RestoreDays = Annotated[int, _range(1, 30000, "a number of days from 1 to 30000")]
RestoreTier = Annotated[str, AfterValidator(_restore_tier)]


class S3Table(TierTable):
    kind: Literal["s3"]
    bucket: Text = Field(description="bucket name")
    prefix: str = Field("", description="key prefix inside the bucket (\"\" = the bucket's root)")
    endpoint_url: Text | None = Field(None, description="S3-compatible endpoint (default: AWS)")
    region: Text | None = Field(None, description="default: boto3's chain, else us-east-1")
    storage_class: Text = Field("STANDARD", description="StorageClass of new objects")
    access_key_id: Text | None = Field(None, description="credentials (default: boto3's chain)")
    secret_access_key: Text | None = Field(None, description="goes with access_key_id")
    session_token: Text | None = Field(None, description="temporary credentials")
    profile: Text | None = Field(None, description="a profile in ~/.aws/config")
    addressing_style: Literal["auto", "path", "virtual"] | None = Field(
        None, description="default: path with endpoint_url, else auto")
    multipart_threshold: Size = Field(16 * MiB, description="larger objects go in a multipart upload")
    multipart_chunksize: Size = Field(8 * MiB, description="first part size (5MiB to 5GiB)")
    connect_timeout: Duration = Field(5.0, description="one connection attempt")
    read_timeout: Duration = Field(20.0, description="one socket read")
    deadline: Duration = Field(30.0, description="all retries of one request")
    max_attempts: Annotated[int, _range(1, 100, "an integer from 1 to 100")] = Field(
        4, description="attempts per request")
    readahead: Size = Field(4 * MiB, description="largest read-ahead window of sequential reads (0 = off)")
    archive_storage_class: Text | None = Field(
        None, description="archive this tier's files in place: their objects move to this class (GLACIER, "
        "DEEP_ARCHIVE, GLACIER_IR, INTELLIGENT_TIERING, STANDARD_IA, ONEZONE_IA), no second copy")
    restore_days: RestoreDays = Field(1, description="archive_storage_class GLACIER/DEEP_ARCHIVE: days S3 keeps "
                                      "the temporary copy a restore reads from")
    restore_tier: RestoreTier = Field("Standard", description="archive_storage_class GLACIER/DEEP_ARCHIVE: "
                                      "Expedited, Standard or Bulk retrieval")

    @model_validator(mode="after")
    def _consistent(self):
        self.storage_class = self.storage_class.upper()
        if self.archive_storage_class is not None:
            self._in_place_class()
        if self.addressing_style is None:
            self.addressing_style = "path" if self.endpoint_url else "auto"
        if self.kind == "s3" and self.storage_class in S3_ARCHIVE_CLASSES:
            raise Invalid("storage_class", f"{self.storage_class} objects cannot be read without a restore; "
                          "use kind = \"s3-archive\" for them")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise Invalid("access_key_id", "access_key_id and secret_access_key go together")
        if not MIN_PART <= self.multipart_chunksize <= MAX_PART:
            raise Invalid("multipart_chunksize", "must be between 5MiB and 5GiB (S3's part sizes)")
        if self.multipart_threshold > MAX_PART:
            raise Invalid("multipart_threshold", "at most 5GiB (S3's largest single PUT)")
        for k in ("connect_timeout", "read_timeout", "deadline"):
            if getattr(self, k) <= 0:
                raise Invalid(k, "timeouts must be positive")
        if self.readahead > 64 * MiB:
            raise Invalid("readahead", "at most 64MiB (it is held in memory per open file)")
        return self

    def _in_place_class(self) -> None:
        cls = self.archive_storage_class = self.archive_storage_class.upper()
        if self.kind != "s3":
            raise Invalid("archive_storage_class", "only for kind = \"s3\" (an s3-archive tier's objects are "
                          "archived already)")
        if cls not in S3_IN_PLACE_CLASSES:
            raise Invalid("archive_storage_class", f"expected one of {', '.join(S3_IN_PLACE_CLASSES)}, got {cls!r}")
        if cls == self.storage_class:
            raise Invalid("archive_storage_class", f"is the tier's storage_class ({cls}): archiving would change "
                          "nothing")
        if self.restore_tier == "Expedited" and cls == "DEEP_ARCHIVE":
            raise Invalid("restore_tier", "DEEP_ARCHIVE has no Expedited retrieval")


def archives_in_place(table: TierTable) -> bool:
    """A tier that archives its own files by changing their objects' storage
    class (an s3 tier with archive_storage_class): an online tier that is
    also the archive target of the files on it."""
    return isinstance(table, S3Table) and table.archive_storage_class is not None


class S3ArchiveTable(S3Table, ArchiveTable):
    kind: Literal["s3-archive"]
    storage_class: Text = Field("GLACIER", description="GLACIER, DEEP_ARCHIVE or GLACIER_IR")
    restore_days: RestoreDays = Field(1, description="days S3 keeps a restored temporary copy")
    restore_tier: RestoreTier = Field("Standard", description="Expedited, Standard or Bulk")

    @model_validator(mode="after")
    def _archive_class(self):
        if self.storage_class not in S3_ARCHIVE_CLASSES + ("GLACIER_IR",):
            raise Invalid("storage_class", f"expected GLACIER, DEEP_ARCHIVE or GLACIER_IR for an s3-archive "
                          f"tier, got {self.storage_class!r}")
        if self.restore_tier == "Expedited" and self.storage_class == "DEEP_ARCHIVE":
            raise Invalid("restore_tier", "DEEP_ARCHIVE has no Expedited retrieval")
        return self


def _chunk_size(v: int) -> int:
    if not 1024 <= v <= 15 * MiB:
        raise ValueError("must be between 1 KiB and 15 MiB")
    return v


class GridFSTable(TierTable):
    kind: Literal["gridfs"]
    url: Text = Field(description="mongodb://... URL")
    bucket: Text = Field("tierfs", description="GridFS bucket name")
    database: Text | None = Field(None, description="default: the URL's database, else tierfs")
    chunk_size: Annotated[Size, AfterValidator(_chunk_size)] = Field(
        255 * 1024, description="GridFS chunk size")


TIER_TABLES: dict[str, type[TierTable]] = {
    m.model_fields["kind"].annotation.__args__[0]: m
    for m in (DiskTable, VaultTable, CommandTable, S3Table, S3ArchiveTable, GridFSTable)}
AnyTier = Annotated[Union[tuple(TIER_TABLES.values())], Field(discriminator="kind")]


# ---- top level -------------------------------------------------------------------------
class Settings(Table):
    """The top level of the config file."""
    catalog: Text | None = Field(None, description="catalog URL (default: SQLite under $TIERFS_HOME)")
    state_dir: Text | None = Field(None, description="staging files, logs (default: $TIERFS_HOME/state)")
    default_tier: Text | None = Field(None, description="tier receiving new files (default: first online tier)")
    default_archive: Text | None = Field(None, description="target of `tierfs archive` (default: first archive tier)")
    restore_mode: Literal["block", "error"] = Field("block", description="opening an archived file waits, or fails")
    block_timeout: Duration = Field(300.0, description="block mode: longest wait in open() before EAGAIN")
    attr_timeout: Duration | None = Field(None, description="kernel attribute cache (default: 1s shared, else 30s)")
    entry_timeout: Duration | None = Field(None, description="kernel name cache (same default)")
    xattrs: Flag = Field(True, description="false: no xattr support at all (faster `ls -l`)")
    read_ahead_kb: Annotated[int, _range(0, 1_000_000, "an integer >= 0")] = Field(
        1024, description="kernel read-ahead of the mount (root only; 0: the kernel's 128)")
    allow_other: Flag = Field(False, description="let users other than the mounter use the mount")
    passthrough: Flag = Field(True, description="FUSE passthrough: the kernel reads and writes files with local "
                              "bytes itself (Linux 6.9+, a root daemon, tierfs's libfuse 3.17+ build)")
    allow_unarchive: Flag = Field(True, description="false: restores are refused (retention), EACCES")
    archivers: Text | None = Field(None, description="group whose members may archive/restore any file")
    workers: Count = Field(2, description="job worker tasks per mount")
    tier_concurrency: Count = Field(2, description="concurrent jobs per destination tier")
    job_retry_delay: Duration = Field(30.0, description="delay before a failed job is retried")
    job_retry_max_delay: Duration = Field(600.0, description="longest wait between attempts of a waiting job")
    job_max_attempts: Count = Field(5, description="failures before a job is marked failed")
    notify_command: Argv | None = Field(None, description="run when a restore is done or failed, a file archived "
                                        "or lost; no shell, the facts in TIERFS_* variables")
    notify_timeout: Duration = Field(30.0, description="longest run of notify_command (then it is killed)")
    notify_batch_window: Duration = Field(5.0, description="one notify_command run gathers a requester's events of "
                                          "one kind while they have such jobs queued, and this long after the last "
                                          "(0: one run per event)")
    on_unclean: Literal["warn", "refuse"] = Field("warn", description="previous daemon died without unmounting")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    metrics_listen: Listen | None = Field(None, description="serve Prometheus metrics over HTTP on HOST:PORT "
                                          "(no authentication: keep it on 127.0.0.1 or a trusted network)")
    track: Literal["open", "read"] = Field("open", description="what counts as an access")
    atime_flush: Duration = Field(60.0, description="access times reach the catalog this often")
    heartbeat_interval: Duration = Field(5.0, description="how often a mount records that it is alive")
    session_timeout: Duration = Field(30.0, description="a mount silent this long is dead")
    tiers: Annotated[dict[str, AnyTier], _checked(lambda v: isinstance(v, dict) and bool(v),
                                                  "at least one [tiers.NAME] table")] | None = Field(
        None, description="[tiers.NAME] tables (default: a disk and a vault tier under $TIERFS_HOME)")
    policy: list[Any] = Field([], description="[[policy]] tables (tierfs/policy/rules.py)")


# ---- policy tables ---------------------------------------------------------------------------
class PolicyTable(Table):
    """The keys of one [[policy]] table and their value types (rules.py checks the rest)."""
    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    name: Any = None
    action: Any = None
    to: Annotated[str | list[str], _checked(lambda v: isinstance(v, str) or (
        isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)),
        "a tier name (archive: or a list of them, a copy on each)")] | None = None
    keep_online: Flag | None = None
    inactive_for: Duration | None = None
    older_than: Duration | None = None
    modified_before: Any = None
    min_size: Size | None = None
    max_size: Size | None = None
    path: Any = None
    exclude: Any = None
    scope: Any = None
    owner: Any = None
    group: Any = None
    tier: Any = None
    xattr: Any = None
    allow_user_override: Flag | None = None
    min_override: Duration | None = None
    max_override: Duration | None = None
    interval: Duration | None = None
    initial_delay: Duration | None = None
    watermark: Flag | None = None
    max_files: Count | None = None
    max_bytes: Size | None = None
    rate: Annotated[float, _checked(lambda v: _number(v) and v > 0, "moves per second (a positive number)")] | None \
        = None
    confirm_delete: Flag | None = None
    enabled: Flag | None = None
    stub_bytes: StubSize | None = None


# ---- errors -----------------------------------------------------------------------------------
_EXPECTED = {
    "string_type": "a string", "bool_type": "true or false", "int_type": "an integer", "float_type": "a number",
    "list_type": "a list", "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table",
}


def _keys_at(model: type[BaseModel], loc: tuple, raw: Any) -> list[str] | None:
    """The keys the table at `loc` (inside `raw`, validated by `model`) accepts."""
    for part in loc:
        if model is Settings and part == "tiers":
            model, raw = None, raw.get(part) if isinstance(raw, dict) else None
            continue
        if model is None:          # inside tiers: NAME, then (pydantic's tag) the kind
            raw = raw.get(part) if isinstance(raw, dict) else None
            model = TIER_TABLES.get(raw.get("kind")) if isinstance(raw, dict) else None
            if model is None:
                return None
            continue
        if isinstance(raw, dict) and part in raw:
            raw = raw[part]
    return sorted(model.model_fields) if model is not None else None


def _message(err: dict, model: type[BaseModel], raw: Any) -> tuple[list, str]:
    loc = list(err["loc"])
    if len(loc) >= 3 and loc[0] == "tiers" and model is Settings:
        del loc[2]                                        # the union's tag (the kind) is no key
    kind, v = err["type"], err.get("input")
    if kind == "extra_forbidden":
        known = [k for k in (_keys_at(model, tuple(loc[:-1]), raw) or []) if k != "kind"]
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else (f" (known: {', '.join(known)})" if known else "")
        return loc, f"unknown key{hint}"
    if kind == "missing":
        return loc, "missing"
    if kind == "union_tag_not_found":
        return loc + ["kind"], "missing (e.g. kind = \"disk\")"
    if kind == "union_tag_invalid":
        return loc + ["kind"], f"unknown tier kind {v.get('kind')!r} (known: {', '.join(sorted(TIER_TABLES))})"
    if kind == "literal_error":
        return loc, f"expected {err['ctx']['expected'].replace(chr(39), '')}, got {v!r}"
    if kind == "value_error":
        e = err["ctx"]["error"]
        if isinstance(e, Invalid):
            return loc + [e.key], e.message
        return loc, str(e)
    if kind in _EXPECTED:
        return loc, f"expected {_EXPECTED[kind]}, got {v!r}"
    return loc, err["msg"]


def key_path(loc: list) -> str:
    """('tiers', 'cold', 'timeout') -> 'tiers.cold.timeout'; ('policy', 2) -> 'policy[2]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate(model: type[Table], raw: Any, label: str = "") -> Any:
    """`raw` validated by `model`; otherwise ConfigError naming the key path
    (after `label`, e.g. "policy 'cold'"). An unknown key is reported first:
    a misspelt key explains the other errors ("missing") it causes."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise errors.ConfigError(_lines(e, model, raw, label)[0]) from None


def problems(model: type[Table], raw: Any) -> list[str]:
    """Every error of `raw` against `model`, one line each, unknown keys
    first (`tierfs config check`); [] when valid."""
    try:
        model.model_validate(raw)
    except ValidationError as e:
        return _lines(e, model, raw, "")
    return []


def _lines(e: ValidationError, model: type[Table], raw: Any, label: str) -> list[str]:
    out = []
    for err in sorted(e.errors(include_url=False), key=lambda x: x["type"] != "extra_forbidden"):
        loc, msg = _message(err, model, raw)
        where = ": ".join(x for x in (label, key_path(loc)) if x)
        out.append(f"{where}: {msg}" if where else msg)
    return list(dict.fromkeys(out))


def tier_table(name: str, raw: dict) -> TierTable:
    """One [tiers.NAME] table validated (ConfigError naming tiers.NAME.KEY)."""
    return validate(Settings, {"tiers": {name: raw}}).tiers[name]


def reference() -> str:
    """The configuration reference as text: one line per key with its default (tests check README)."""
    lines = []
    for prefix, model in [("", Settings), *((f"tiers.NAME ({k})", m) for k, m in TIER_TABLES.items())]:
        for key, f in model.model_fields.items():
            if key == "kind":
                continue
            default = "required" if f.is_required() else show(f.default)
            lines.append(f"{prefix + '.' if prefix else ''}{key} = {default}  # {f.description}")
    return "\n".join(lines)


def tier_reference() -> str:
    """The README's table of tier options, from the models: each kind's own
    keys (s3-archive: what it adds to or changes from s3) with their defaults."""
    rows = ["| kind | option | default | meaning |", "|---|---|---|---|"]
    for kind, model in TIER_TABLES.items():
        base = S3Table.model_fields if model is S3ArchiveTable else TierTable.model_fields
        for key, f in model.model_fields.items():
            same = key in base and (f.default, f.description) == (base[key].default, base[key].description)
            if same or key in TierTable.model_fields:
                continue
            default = "required" if f.is_required() else f"`{show(f.default, size=size_value in _funcs(f))}`"
            rows.append(f"| `{kind}` | `{key}` | {default} | {f.description} |")
    return "\n".join(rows)


def _funcs(f) -> list:
    """The validator functions of a field's type (Size and Duration are told apart by them)."""
    return [getattr(m, "func", None) for m in f.metadata]


def show(v: Any, size: bool = False) -> str:
    """A default as the README writes it: 300.0 -> 300, True -> true, None -> none, a size 8388608 -> 8MiB."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if size and v:
        for unit, n in (("MiB", MiB), ("KiB", 1024)):
            if v % n == 0:
                return f"{v // n}{unit}"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v) if v != "" else '""'


if __name__ == "__main__":   # python -m tierfs.settings: the README's tier option table
    print(tier_reference())
