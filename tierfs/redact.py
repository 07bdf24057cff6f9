"""Secrets kept out of logs, messages and command lines: one rule for all.

A URL's password (`mongodb://user:PASSWORD@host`) is shown as `***`, and a
configuration key whose name says it holds a credential is a secret.
"""

from __future__ import annotations

import re
from typing import Any

#: parts of a key name that mark its value as a credential (secret_access_key, session_token, password...)
SECRET_WORDS = ("secret", "password", "token", "access_key")
_URL_PASSWORD = re.compile(r"//([^:/@]+):[^@]*@")


def redact_url(url: str) -> str:
    """`url` with its password shown as ***."""
    return _URL_PASSWORD.sub(r"//\1:***@", url)


def secret_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    """The (dotted) keys of `values`, at any depth, that hold a credential:
    a non-empty value under a secret-sounding name, or a URL with a password.
    Only key names and values are looked at (a path that happens to contain
    "token" is no secret)."""
    out = []
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += secret_keys(v, key + ".")
        elif (v not in (None, "", False) and any(w in str(k).lower() for w in SECRET_WORDS)) or \
                (isinstance(v, str) and redact_url(v) != v):
            out.append(key)
    return out
