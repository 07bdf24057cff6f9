"""How names and other untrusted text are shown: on a terminal, and in JSON.

Any user who can create a file in a shared directory chooses its name, and
root's `tierfs find` prints it. A name may hold an escape sequence (ESC ] 0 ;
... BEL retitles the terminal, ESC [ 2 J clears it, some terminals answer
queries by typing into the shell), a newline that forges an output line, or
bytes that are not UTF-8. So every human-readable line the CLI prints goes
through `printable`, GNU ls style: control characters become `\\n`, `\\t`,
`\\r` or `\\xNN` (C0 and DEL), C1 controls and Unicode line separators and
bidirectional overrides `\\uNNNN`, and bytes that are not UTF-8 `\\xNN`.
Backslashes stay as they are, so ordinary names print unchanged (the shown
form is for people: `find -0` and `--json` give the exact names).

JSON (`--json`): a name that is valid UTF-8 is a JSON string holding exactly
that name (json.dumps escapes control characters). A name that is not valid
UTF-8 has `printable`'s form in `path` and its exact bytes, base64-encoded,
in `path_b64`: `path_b64` is present exactly when `path` is not the name.
"""

from __future__ import annotations

import base64
import os
import re

import click

#: What `printable` escapes: C0 controls, DEL and C1 controls; U+2028/U+2029 (line and paragraph separators);
#: the bidirectional marks, embedding, override and isolate controls (they reorder what follows on the line: a name can
#: make "evil.sh\u202eexe.txt" look like "evil.shtxt.exe"); lone surrogates (bytes that were not UTF-8, decoded
#: with surrogateescape as os.fsdecode does, and surrogates that were never valid at all).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(m: re.Match) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    if n < 0x80:
        return f"\\x{n:02x}"
    if 0xdc80 <= n <= 0xdcff:          # an undecodable byte (surrogateescape)
        return f"\\x{n - 0xdc00:02x}"
    return f"\\u{n:04x}"


def printable(text: str | bytes) -> str:
    """`text` with nothing a terminal would act on (see the module doc); bytes
    are decoded as UTF-8, their invalid bytes shown as \\xNN."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    return _UNSAFE.sub(_escape, text)


#: Control bytes but the newline: a batch of ASCII names joined by newlines without one of these (and with
#: exactly the joining newlines) is its own printable form.
_CONTROL_BUT_NEWLINE = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")


def printable_lines(names: list[bytes]) -> bytes:
    """b"".join(printable(n).encode() + b"\n" for n in names), for `tierfs
    find`'s millions of paths: a batch of plain ASCII names (nearly always)
    is checked and joined in a few passes of C code over the whole batch
    instead of decoded, matched and encoded one by one (0.09 us a path
    instead of 0.43 us: about a second less for 2.5M paths); a batch holding
    anything else goes name by name."""
    if not names:
        return b""
    blob = b"\n".join(names)
    if blob.isascii() and not _CONTROL_BUT_NEWLINE.search(blob) and blob.count(b"\n") == len(names) - 1:
        return blob + b"\n"
    return b"".join(printable(n).encode() + b"\n" for n in names)


def echo(line: str = "", err: bool = False) -> None:
    """Print one line of human-readable output, escaped: the one way the CLI
    prints text that may hold names (a newline inside `line` is shown as \\n)."""
    click.echo(printable(line), err=err)


def name_fields(key: str, name: str | bytes) -> dict:
    """{key: name} for JSON output; for a name that is not valid UTF-8,
    {key: printable form, key + "_b64": base64 of the exact bytes}."""
    raw = name if isinstance(name, bytes) else os.fsencode(name)
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {key: printable(raw), key + "_b64": base64.b64encode(raw).decode("ascii")}
