"""The policy engine: lifecycle rules ([[policy]] tables) compiled to catalog
queries whose matches become jobs (archive, release, migrate) or deletions.

- rules.py: parse and validate [[policy]] tables and tier watermarks.
- conditions.py: a rule -> an indexed FileQuery plus per-candidate checks
  (path globs, scope, pins, xattrs, per-directory overrides).
- engine.py: one run (paged, limited, rate-limited, dry-run or real).
- scheduler.py: the daemon extension running rules on their interval and
  on tier watermarks, under the catalog lease "policy".
- clock.py: the injectable clock (tests accelerate time instead of sleeping).
"""

from .rules import Rule, parse_rules, parse_watermarks  # noqa: F401
