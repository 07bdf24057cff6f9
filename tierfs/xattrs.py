"""The `user.tierfs.*` extended attributes: every name, once.

The mount answers the read-only ones from the catalog (state, tier,
checksum, effective_placement, info, stats), takes requests through
`request`, and stores the settable ones (placement, pin, inactive_for) like
any user xattr, with checks (fs.py). The CLI and the importer use the same
names from outside the daemon (`str` forms: os.getxattr takes either).
"""

from __future__ import annotations

PREFIX = b"user.tierfs."

# answered by the mount (never stored)
STATE = b"user.tierfs.state"
TIER = b"user.tierfs.tier"
CHECKSUM = b"user.tierfs.checksum"
EFFECTIVE_PLACEMENT = b"user.tierfs.effective_placement"
INFO = b"user.tierfs.info"          # JSON: state, tiers, jobs, history of one file
STATS = b"user.tierfs.stats"        # JSON on the mount's root: session, tiers, requests, open files
REQUEST = b"user.tierfs.request"    # write-only: "archive", "restore", "release", "migrate to=T"...

# stored, with checks
PLACEMENT = b"user.tierfs.placement"        # a directory's default tier for new files
PIN = b"user.tierfs.pin"                    # policies leave the file (or tree) alone
INACTIVE_FOR = b"user.tierfs.inactive_for"  # a directory's override of a policy's inactive_for


def text(name: bytes) -> str:
    """The str form of a name, for os.getxattr/os.setxattr calls."""
    return name.decode()
