"""Read-only CLI commands on a catalog no tierfs has mounted yet: one
readable line and the configuration exit code, and no catalog created as a
side effect (through the real `tierfs` command)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import Mount
from tierfs import client
from tierfs.catalog import open_catalog


def sqlite_files(url: str) -> list[str]:
    path = url[len("sqlite:///"):]
    return sorted(p for p in (path, path + "-wal", path + "-shm") if os.path.exists(p))


def mongo_databases(url: str) -> list[str]:
    import pymongo
    client_ = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        return client_.list_database_names()
    finally:
        client_.close()


def stored(url: str):
    """What exists of the catalog outside tierfs: SQLite files (and their
    sizes), or whether the MongoDB database exists."""
    if url.startswith("sqlite"):
        return [(p, os.path.getsize(p)) for p in sqlite_files(url)]
    return url.split("/")[3].split("?")[0] in mongo_databases(url)


@pytest.mark.parametrize("empty_file", [False, True], ids=["missing", "empty-file"])
def test_queue_on_a_never_mounted_catalog(catalog_url, tmp_path, empty_file):
    if empty_file and not catalog_url.startswith("sqlite"):
        pytest.skip("an empty file is an SQLite case")
    m = Mount(str(tmp_path), catalog_url)
    m.write_config()
    if empty_file:
        open(catalog_url[len("sqlite:///"):], "w").close()
    before = stored(catalog_url)
    for args in (["queue"], ["queue", "--failed", "--json"], ["queue", "--cancel-all", "restore"]):
        r = m.cli(*args, "--config", m.config_path, check=False)
        assert r.returncode == client.EXIT_CONFIG, (args, r.returncode, r.stdout, r.stderr)
        assert r.stderr == (f"tierfs: catalog {catalog_url} is empty: mount it once first "
                            f"(tierfs mount MOUNTPOINT --config {m.config_path})\n"), r.stderr
        assert r.stdout == ""
        assert stored(catalog_url) == before, "a read-only command created the catalog"

    cat = open_catalog(catalog_url)  # what the first mount does
    cat.init()
    cat.close()
    r = m.cli("queue", "--config", m.config_path, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "no jobs\n", "")


def test_queue_with_the_embedded_default(tmp_path):
    """No config at all: the embedded default's catalog under $TIERFS_HOME."""
    from tierfs.config import SYSTEM_CONFIG
    if os.path.exists(SYSTEM_CONFIG):
        pytest.skip(f"{SYSTEM_CONFIG} exists: the default lookup would use it")
    m = Mount(str(tmp_path), "unused")
    # no mount of ours running either (other tests' root mounts publish in /run/tierfs): nothing implied
    r = m.cli("queue", check=False, env={"TIERFS_RUNTIME_DIR": str(tmp_path / "run")})
    db = os.path.join(m.home, "catalog.db")
    assert r.returncode == client.EXIT_CONFIG, (r.returncode, r.stderr)
    assert r.stderr == (f"tierfs: catalog sqlite:///{db} is empty: mount it once first "
                        "(tierfs mount MOUNTPOINT; config: default lookup: embedded default)\n"), r.stderr
    assert not os.path.exists(db)


def test_status_and_fsck_on_a_never_mounted_catalog(catalog_url, tmp_path):
    """The other readers (status through cli_admin, fsck) say the same in one
    line and create nothing either."""
    m = Mount(str(tmp_path), catalog_url)
    m.write_config()
    before = stored(catalog_url)
    for args in (["status", "--config", m.config_path], ["fsck", "--config", m.config_path]):
        r = m.cli(*args, check=False)
        assert r.returncode == client.EXIT_CONFIG, (args, r.returncode, r.stdout, r.stderr)
        assert "is empty" in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
        assert stored(catalog_url) == before, f"{args[0]} created the catalog"
