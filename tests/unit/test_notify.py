"""notify_command's pure parts: the command line becomes an argv without a
shell, and the environment a run gets (tierfs/notify.py; the runs themselves
are tests/mount/test_notify.py)."""

import pytest

from tierfs import errors
from tierfs.notify import Event, environment
from tierfs.settings import Settings, validate


@pytest.mark.parametrize("value,argv", [
    ("notify-send 'restore done'", ["notify-send", "restore done"]),
    ('/opt/hooks/tell "$USER" $(id) `x`', ["/opt/hooks/tell", "$USER", "$(id)", "`x`"]),   # nothing substituted
    (["mail", "-s", "tierfs: done", "ops"], ["mail", "-s", "tierfs: done", "ops"]),
])
def test_the_command_line_is_split_like_a_shell_would_but_never_run_by_one(value, argv):
    assert validate(Settings, {"notify_command": value}).notify_command == argv


@pytest.mark.parametrize("value,message", [
    ("", "notify_command: expected a command line or a list of words, got ''"),
    ([], "notify_command: expected a command line or a list of words, got []"),
    (["mail", ""], "notify_command: expected a command line or a list of words"),
    ("tell 'oops", "notify_command: cannot split \"tell 'oops\" into words like a shell: no closing quotation"),
])
def test_a_bad_command_line_is_one_line_naming_the_key(value, message):
    with pytest.raises(errors.ConfigError) as e:
        validate(Settings, {"notify_command": value})
    assert str(e.value).startswith(message), str(e.value)


def ev(path: bytes, size: int, uid=1000) -> Event:
    return Event("restored", 7, path, size, "disk", uid, "command restore by uid 1000", "command restore by uid 1000")


def test_the_environment_carries_names_exactly_and_nothing_else_of_the_daemon(monkeypatch):
    monkeypatch.setenv("TIERFS_MOUNT_OPTIONS", '["catalog=mongodb://u:secret@h/db"]')
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("LC_TIME", "C")
    name = b"/ds/a b\n$(id)\xff"
    env = environment([ev(name, 10), ev(b"/ds/sub/c", 5)], "/mnt/t", "/tmp/p0", "/tmp/pl")
    assert env[b"TIERFS_PATH"] == name and env[b"TIERFS_DIR"] == b"/ds"
    assert env[b"TIERFS_COUNT"] == b"2" and env[b"TIERFS_BYTES"] == b"15" and env[b"TIERFS_SIZE"] == b"10"
    assert env[b"TIERFS_MOUNT"] == b"/mnt/t" and env[b"TIERFS_UID"] == b"1000"
    assert env[b"TIERFS_PATHS_FILE"] == b"/tmp/p0" and env[b"TIERFS_PATHS_LINES_FILE"] == b"/tmp/pl"
    assert env[b"LC_TIME"] == b"C" and env[b"PATH"]
    assert not {b"TIERFS_MOUNT_OPTIONS", b"AWS_SECRET_ACCESS_KEY", b"TIERFS_HOME"} & set(env)


def test_a_policys_event_names_no_user_and_a_nul_cannot_break_the_run():
    e = Event("archived", 3, b"/x", 1, "vault", None, "policy rule 'cold'", "policy rule 'cold'\0tail")
    env = environment([e], "/mnt", "/p0", "/pl")
    assert env[b"TIERFS_UID"] == b"" and env[b"TIERFS_USER"] == b"" and env[b"TIERFS_DIR"] == b"/"
    assert env[b"TIERFS_REASON"] == b"policy rule 'cold'tail"
    assert all(b"\0" not in v for v in env.values())   # execve would refuse it ("embedded null byte")
