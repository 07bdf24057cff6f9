"""Parsing and printing of human sizes ("1MB", "10GiB") and durations ("90d", "12h")."""

from __future__ import annotations

import re

from . import errors

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4, "p": 1000**5, "pb": 1000**5,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "pib": 1024**5,
}
_DUR_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_MAX_SIZE = 1 << 62
_MAX_DURATION = 1000 * 365 * 86400


def size_value(value) -> int:
    """'1MB' -> 1000000, '1MiB' -> 1048576, 42 -> 42. ValueError saying the expected form otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '10MB', got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"expected a size like '10MB' or '1GiB', got {value!r}")
        n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if n < 0 or n > _MAX_SIZE:
        raise ValueError(f"size {value!r} is out of range")
    return n


def duration_value(value) -> float:
    """'90d' -> seconds, '12h', '30m', '1.5s', a bare number = seconds. ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '90d', got {value!r}")
    if isinstance(value, (int, float)):
        s = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _DUR_UNITS and m.group(2) != "":
            raise ValueError(f"expected a duration like '90d', '12h' or '30s', got {value!r}")
        s = float(m.group(1)) * _DUR_UNITS.get(m.group(2).lower(), 1)
    if s < 0 or s > _MAX_DURATION:
        raise ValueError(f"duration {value!r} is out of range")
    return s


def parse_size(value, key: str = "size") -> int:
    """size_value(), with a ConfigError naming `key`."""
    try:
        return size_value(value)
    except ValueError as e:
        raise errors.ConfigError(f"{key}: {e}") from None


def parse_duration(value, key: str = "duration") -> float:
    """duration_value(), with a ConfigError naming `key`."""
    try:
        return duration_value(value)
    except ValueError as e:
        raise errors.ConfigError(f"{key}: {e}") from None


def fmt_size(n: int) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f}{unit}"
    return f"{n}B"


def fmt_duration(s: float) -> str:
    for unit, f in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= f:
            return f"{s / f:.0f}{unit}"
    return f"{s:.0f}s"
