"""POSIX behaviour through a real mount, driven by real shell tools, on every
catalog backend (any_mount). Bytes are always compared with the source."""

import ctypes
import errno
import hashlib
import os
import random
import stat
import subprocess
import time

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.mount


def make_tree(root: str, seed: int = 1) -> None:
    """A deterministic tree: nested dirs, files of many sizes, a symlink, odd names, modes."""
    rnd = random.Random(seed)
    os.makedirs(root)
    for d in range(4):
        sub = os.path.join(root, f"dir {d}", "inner")
        os.makedirs(sub)
        for i in range(12):
            size = rnd.choice([0, 1, 100, 4095, 4096, 70000, 300000])
            p = os.path.join(sub if i % 2 else os.path.dirname(sub), f"file-{i}.bin")
            with open(p, "wb") as f:
                f.write(rnd.randbytes(size))
            os.chmod(p, rnd.choice([0o644, 0o600, 0o755]))
    os.symlink("dir 0/file-0.bin", os.path.join(root, "link"))
    with open(os.path.join(root, "ünïcode ☃.txt"), "w") as f:
        f.write("snow\n")


def test_cp_a_round_trip(any_mount, tmp_path):
    src = str(tmp_path / "src")
    make_tree(src)
    any_mount.sh(f"cp -a '{src}' tree && cp -a tree '{tmp_path}/back'")
    subprocess.run(["diff", "-r", "--no-dereference", src, str(tmp_path / "back")], check=True)
    st_src = os.stat(os.path.join(src, "dir 1", "file-0.bin"))
    st_mnt = os.stat(any_mount.path("tree", "dir 1", "file-0.bin"))
    assert (st_src.st_mode, st_src.st_mtime_ns, st_src.st_size) == (st_mnt.st_mode, st_mnt.st_mtime_ns,
                                                                     st_mnt.st_size)
    assert os.readlink(any_mount.path("tree", "link")) == "dir 0/file-0.bin"


def test_tar_round_trip(any_mount, tmp_path):
    src = str(tmp_path / "src")
    make_tree(src, seed=2)
    any_mount.sh(f"mkdir -p '{tmp_path}/out' && tar -C '{src}' -cf - . | tar -xf - && "
                 f"tar -cf - . | tar -C '{tmp_path}/out' -xf -")
    subprocess.run(["diff", "-r", "--no-dereference", src, str(tmp_path / "out")], check=True)


def test_mv_rm_ln_chmod_touch(any_mount):
    any_mount.sh("""
        mkdir -p a/b && echo one > a/b/f && echo two > g
        mv a/b/f a/f2 && mv g a/b/g
        ln a/f2 hard && ln -s a/f2 soft
        test "$(cat soft)" = one && test "$(cat hard)" = one
        test "$(stat -c %h a/f2)" = 2
        chmod 640 a/f2 && test "$(stat -c %a hard)" = 640
        touch -d '2001-02-03 04:05:06' a/b/g && test "$(stat -c %Y a/b/g)" = "$(date -d '2001-02-03 04:05:06' +%s)"
        touch -a -d '2002-01-01' a/b/g && test "$(stat -c %X a/b/g)" = "$(date -d '2002-01-01' +%s)"
        mv a moved && test -f moved/b/g
        rm hard && test "$(stat -c %h moved/f2)" = 1
        rm -r moved soft && test -z "$(ls -A)"
    """)


def test_rmdir_not_empty_and_errors(any_mount):
    os.makedirs(any_mount.path("d", "e"))
    with pytest.raises(OSError) as e:
        os.rmdir(any_mount.path("d"))
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as e:
        open(any_mount.path("x" * 256), "w")
    assert e.value.errno == errno.ENAMETOOLONG
    open(any_mount.path("y" * 255), "w").close()
    assert os.path.exists(any_mount.path("y" * 255))
    with pytest.raises(FileNotFoundError):
        os.stat(any_mount.path("nope"))


def test_rename_over_existing_and_flags(any_mount):
    p = any_mount.path
    with open(p("a"), "w") as f:
        f.write("A")
    with open(p("b"), "w") as f:
        f.write("B")
    subprocess.run(["python3", "-c", f"import os; os.rename({p('a')!r}, {p('b')!r})"], check=True)
    assert open(p("b")).read() == "A" and not os.path.exists(p("a"))
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD, NOREPLACE, EXCHANGE = -100, 1, 2
    with open(p("c"), "w") as f:
        f.write("C")
    r = libc.renameat2(AT_FDCWD, p("c").encode(), AT_FDCWD, p("b").encode(), NOREPLACE)
    assert r == -1 and ctypes.get_errno() == errno.EEXIST
    r = libc.renameat2(AT_FDCWD, p("c").encode(), AT_FDCWD, p("b").encode(), EXCHANGE)
    assert r == 0, os.strerror(ctypes.get_errno())
    assert open(p("b")).read() == "C" and open(p("c")).read() == "A"


def test_unlinked_open_file_stays_readable(any_mount):
    p = any_mount.path("tmpfile")
    with open(p, "wb") as f:
        f.write(b"still here" * 1000)
    f = open(p, "rb")
    os.unlink(p)
    assert not os.path.exists(p)
    assert f.read() == b"still here" * 1000
    f.close()


def test_sparse_5g_truncate(any_mount):
    any_mount.sh("truncate -s 5G sparse && printf end >> sparse")
    st = os.stat(any_mount.path("sparse"))
    assert st.st_size == 5 * 2**30 + 3
    with open(any_mount.path("sparse"), "rb") as f:
        f.seek(3 * 2**30)
        assert f.read(4096) == b"\0" * 4096
        f.seek(5 * 2**30)
        assert f.read() == b"end"
    any_mount.sh("truncate -s 100 sparse")
    assert os.stat(any_mount.path("sparse")).st_size == 100


def test_dd_1gib_checksum(any_mount, tmp_path):
    src = tmp_path / "big"
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        h = hashlib.sha256()
        for i in range(1024):
            b = block[i % 997:] + block[: i % 997]
            f.write(b)
            h.update(b)
    any_mount.sh(f"dd if={src} of=big bs=4M conv=fsync status=none")
    out = any_mount.sh("sha256sum big").stdout.split()[0]
    assert out == h.hexdigest()
    # the checksum is recorded once the content is final (after close)
    wait_for(lambda: any_mount.sh("getfattr --only-values -n user.tierfs.checksum big", check=False).stdout
             == h.hexdigest(), timeout=60, what="recorded checksum")


def test_git_inside_mount(any_mount):
    any_mount.sh("""
        git init -q repo && cd repo
        git config user.email t@example.com && git config user.name tester
        for i in 1 2 3; do echo "line $i" > f$i.txt; done
        git add . && git commit -qm first
        echo more >> f1.txt && git commit -qam second
        git log --oneline | wc -l | grep -q 2
        git fsck --no-progress
        git status --porcelain | wc -l | grep -q '^0$'
    """)


def test_xattrs_and_tierfs_attributes(any_mount):
    any_mount.sh("""
        echo data > f
        setfattr -n user.project -v alpha f
        test "$(getfattr --only-values -n user.project f)" = alpha
        test "$(getfattr --only-values -n user.tierfs.state f)" = online
        test "$(getfattr --only-values -n user.tierfs.tier f)" = disk
        setfattr -x user.project f
        ! getfattr -n user.project f 2>/dev/null
        ! setfattr -n user.tierfs.state -v archived f 2>/dev/null
        ! setfattr -n trusted.x -v 1 f 2>/dev/null
    """)
    big = b"v" * 65536
    os.setxattr(any_mount.path("f"), "user.big", big)
    assert os.getxattr(any_mount.path("f"), "user.big") == big
    r = any_mount.cli("state", any_mount.path("f"))
    assert " online " in r.stdout and " disk " in r.stdout


def test_owner_of_created_files(make_mount):
    m = make_mount(config="allow_other = true")
    os.chmod(m.mnt, 0o1777)
    m.sh("touch mine", user="nobody")
    st = os.stat(m.path("mine"))
    import pwd
    nobody = pwd.getpwnam("nobody")
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    r = m.sh("echo x > /dev/null; cat /proc/self/mountinfo | grep tierfs", user="nobody")
    assert "default_permissions" in r.stdout and "allow_other" in r.stdout
    # default_permissions: the kernel enforces modes for other users
    m.sh("echo secret > private && chmod 600 private")
    r = m.sh("cat private", check=False, user="nobody")
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_statfs_reports_default_tier(any_mount):
    st = os.statvfs(any_mount.mnt)
    home = os.statvfs(any_mount.home)
    assert st.f_namemax == 255
    assert abs(st.f_blocks * st.f_frsize - home.f_blocks * home.f_frsize) < 2**30


def test_unmount_remount_keeps_everything(make_mount, catalog_url, tmp_path):
    m = make_mount(catalog_url=catalog_url)
    src = str(tmp_path / "src")
    make_tree(src, seed=3)
    m.sh(f"cp -a '{src}' tree && setfattr -n user.k -v v tree/link -h 2>/dev/null || true")
    m.stop()
    assert os.listdir(m.mnt) == []
    m.start()
    subprocess.run(["diff", "-r", "--no-dereference", src, m.path("tree")], check=True)


def test_killed_daemon_leaves_no_stale_mount(make_mount, tmp_path):
    m = make_mount()
    data = os.urandom(200000)
    with open(m.path("kept"), "wb") as f:
        f.write(data)
    m.kill()
    from tierfs import mounts
    # auto_unmount removes the mount; if a stale one is left, `tierfs mount` must clean it with a message
    stale = not mounts.wait_mounted(m.mnt, 5, mounted=False)  # auto_unmount acts asynchronously
    m.write_config()
    r = m.cli("mount", m.mnt, "--config", m.config_path)
    assert mounts.wait_mounted(m.mnt, 10)
    m.pid = int(r.stdout.split("(pid ")[1].split(",")[0])
    if stale:
        assert "cleaned up a stale mount" in r.stderr
    with open(m.path("kept"), "rb") as f:
        assert f.read() == data
    assert "did not unmount cleanly" in m.log()


def test_mount_refuses_busy_or_nonempty(make_mount, tmp_path):
    m = make_mount()
    r = m.cli("mount", m.mnt, "--config", m.config_path, check=False)
    assert r.returncode == 1 and "already mounted" in r.stderr
    d = tmp_path / "full"
    d.mkdir()
    (d / "x").write_text("x")
    r = m.cli("mount", str(d), "--config", m.config_path, check=False)
    assert r.returncode == 1 and "not empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_handler_bug_answers_eio_and_mount_survives(make_mount):
    m = make_mount(env={"TIERFS_FAULT": "handler.listxattr"})
    open(m.path("f"), "w").close()
    r = m.sh("getfattr -d f", check=False)
    assert r.returncode != 0 or "Input/output error" in r.stderr
    assert "Input/output error" in r.stderr
    m.sh("echo alive > g && cat g | grep -q alive")
    assert "unexpected error in listxattr" in m.log()


def test_bad_config_is_one_clear_line(make_mount, tmp_path):
    m = make_mount(start=False)
    bad = tmp_path / "bad.toml"
    for body, key in (('restore_mode = "sometimes"\n', "restore_mode"),
                      ('bogus_key = 1\n', "bogus_key"),
                      ('[tiers.d]\nkind = "disk"\npath = "/nonexistent/dir"\n', "tiers.d.path"),
                      ('[tiers.d]\nkind = "floppy"\n', "floppy"),
                      ('catalog = "oracle://x"\n', "catalog"),
                      ('restore_mode = \n', "invalid TOML")):
        bad.write_text(body)
        r = m.cli("mount", m.mnt, "--config", str(bad), check=False)
        assert r.returncode == 6, (body, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0], (body, r.stderr)
    from tierfs import mounts
    assert mounts.find_mount(m.mnt) is None


def test_sigterm_unmounts_cleanly(make_mount):
    m = make_mount()
    with open(m.path("f"), "w") as f:
        f.write("x")
    os.kill(m.pid, 15)
    from tierfs import mounts
    assert mounts.wait_mounted(m.mnt, 20, mounted=False)
    wait_for(lambda: not mounts.pid_alive(m.pid) or _reap(m.pid), timeout=20, what="daemon exit")
    assert "received SIGTERM: unmounting" in m.log() and "tierfs unmounted from" in m.log()


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return False
