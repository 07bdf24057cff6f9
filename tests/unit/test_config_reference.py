"""The README's configuration reference matches the models of
tierfs/settings.py: every top-level key is a row of the top-level table with
the model's default, every tier kind's row names every option of its model,
and every [[policy]] key is in the rule reference (tierfs/policy/rules.py)."""

from __future__ import annotations

import os
import re

from tierfs import settings
from tierfs.policy import rules

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_section(title: str) -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with `header`."""
    lines = text[text.index(header):].splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:] if line.startswith("|")][
        :next((i for i, line in enumerate(lines[2:]) if not line.startswith("|")), None)]


def keys_of(cell: str) -> set[str]:
    return set(re.findall(r"`([a-z_0-9-]+)`", cell))


CONFIG = readme_section("Configuration")
TOP = table_rows(CONFIG, "| key | default | meaning |")
KINDS = table_rows(CONFIG, "| kind | options | notes |")
COMMON = set(settings.TierTable.model_fields) - {"kind"}


def test_every_top_level_key_is_documented_with_its_default():
    documented = {k: row for row in TOP for k in keys_of(row[0])}
    for key, f in settings.Settings.model_fields.items():
        if key in ("tiers", "policy"):
            continue    # their own sections
        assert key in documented, f"README's top-level key table has no row for `{key}`"
        if f.default is not None:
            assert f"`{settings.show(f.default)}`" in documented[key][1], \
                f"README gives `{key}` the default {documented[key][1]}; the model says {settings.show(f.default)}"
    assert set(documented) <= set(settings.Settings.model_fields), "README documents keys the model lacks"


def test_every_tier_option_is_documented_for_its_kind():
    rows = {row[0].strip("`"): keys_of(row[1]) for row in KINDS}
    assert set(rows) == set(settings.TIER_TABLES), "README's tier kinds differ from the models'"
    s3 = set(settings.S3Table.model_fields)
    for kind, model in settings.TIER_TABLES.items():
        options = set(model.model_fields) - COMMON - {"kind"}
        named = rows[kind] - {"s3"} if kind == "s3-archive" else rows[kind]   # "as `s3`, with ..."
        documented = named | (s3 if kind == "s3-archive" else set())
        assert options <= documented, f"README's {kind} row lacks {sorted(options - documented)}"
        assert named <= options, f"README's {kind} row names {sorted(rows[kind] - options)}, not options"
    intro = CONFIG.split("| kind | options | notes |")[0].rstrip().rsplit("\n\n", 1)[-1]
    for key in COMMON:
        assert f"`{key}`" in intro, f"README's sentence on keys every tier accepts lacks `{key}`"


def test_every_policy_key_is_in_the_rule_reference():
    for key in settings.PolicyTable.model_fields:
        assert re.search(rf"^    {key} = ", rules.__doc__, re.M), f"policy key {key} is not in rules.py's docstring"


def test_the_generated_reference_covers_every_key():
    text = settings.reference()
    for key in settings.Settings.model_fields:
        assert f"\n{key} = " in "\n" + text
    assert "tiers.NAME (command).timeout = 3600" in text


def test_the_readme_tier_options_table_is_the_generated_one():
    """README's tier option table is `python -m tierfs.settings` verbatim: a new
    option or default changes the model, and this test says to regenerate it."""
    assert settings.tier_reference() in CONFIG, "regenerate README's tier options table: python -m tierfs.settings"
