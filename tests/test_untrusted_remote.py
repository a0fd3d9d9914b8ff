"""A remote changed behind btsoot's back: nothing outside it is ever written, and
the mirror comes back exact.

Each case backs up, then plays a hostile NAS (a folder of the remote swapped for
a link to somewhere else), changes the source below that folder, and backs up
again. The victim tree and the source are compared, bytes, modes and times,
before and after.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import assert_mirror, tree_state


def build(src: Path) -> None:
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "x").write_bytes(b"x in d")
    (src / "d" / "y").write_bytes(b"y in d")
    (src / "d" / "sub" / "z").write_bytes(b"z in d/sub")
    (src / "x").write_bytes(b"x at the top")
    (src / "other").mkdir()
    (src / "other" / "x").write_bytes(b"the source's own x")
    (src / "other" / "y").write_bytes(b"the source's own y")


def day(src: Path) -> None:
    (src / "d" / "x").unlink()  # a deletion below the swapped folder
    (src / "d" / "y").write_bytes(b"y changed, longer")  # a change below it
    (src / "d" / "new").write_bytes(b"new in d")  # an addition below it
    os.chmod(src / "d", 0o750)  # its attributes


@pytest.mark.parametrize("where", ["outside", "into-source", "remote-root", "chain"])
def test_a_folder_swapped_for_a_link_never_leads_a_write_out(block, where: str) -> None:
    env, src, dst = block
    build(src)
    env.run("backup", "b", check=0)

    victim = env.root / "victim"
    victim.mkdir()
    (victim / "x").write_bytes(b"victim x")
    (victim / "y").write_bytes(b"victim y")
    (victim / "sub").mkdir()
    (victim / "sub" / "z").write_bytes(b"victim z")
    os.chmod(victim, 0o700)
    target = {"outside": victim, "into-source": src / "other", "remote-root": Path("."),
              "chain": env.root / "hop"}[where]
    if where == "chain":
        (env.root / "hop").symlink_to(victim)
    os.rename(dst / "d", env.root / "swapped")  # what stood there goes away
    (dst / "d").symlink_to(target)

    day(src)
    outside = {"victim": tree_state(victim, ()), "other": tree_state(src / "other", ())}
    r = env.run("backup", "b", check=0)
    assert "Traceback" not in r.stderr, r.stderr
    assert tree_state(victim, ()) == outside["victim"]
    assert tree_state(src / "other", ()) == outside["other"]
    # The link was set aside (kept, reported), the folder made again and filled.
    assert "found what btsoot did not put there" in r.stderr
    aside = [p for p in (dst / ".btsoot" / "damaged").rglob("*") if p.is_symlink()]
    assert [os.readlink(p) for p in aside] == [os.fspath(target)]
    assert_mirror(src, dst)
    env.run("verify", "b", check=0)
    assert "nothing" in env.run("backup", "b", check=0).stdout


@pytest.mark.parametrize("history", [False, True])
def test_a_stray_file_in_a_folder_deleted_at_the_source_never_stops_a_run(block, history) -> None:
    """Without history the folder's files are deleted and what someone left there is
    set aside; with it the folder moves into the attic whole, strays included, and
    when that attic goes, only what its list names is removed: the strays are set
    aside then. Never a stop, never a stranger's file deleted."""
    env, src, dst = block
    if not history:
        env.config.write_text(env.config.read_text().replace('keep_within = "30d"',
                                                             'keep_within = "0"'))
    build(src)
    env.run("backup", "b", check=0)
    (dst / "d" / "sub" / ".DS_Store").write_bytes(b"finder")  # macOS over SMB
    (dst / "d" / "@eaDir").mkdir()  # Synology's index
    (dst / "d" / "@eaDir" / "x@SynoEAStream").write_bytes(b"meta")
    shutil.rmtree(src / "d")
    r = env.run("backup", "b", check=0)
    assert r.returncode == 0, r.stderr
    assert_mirror(src, dst)
    if history:
        assert "retire 1" in r.stdout, r.stdout  # the folder, whole: one rename
        attic = dst / ".btsoot" / "attic"
        (run,) = [p for p in attic.iterdir() if p.is_dir()]
        assert (run / "d" / "sub" / ".DS_Store").read_bytes() == b"finder"
        # The terms tightened: the next run that writes lets that attic go.
        env.config.write_text(env.config.read_text().replace('keep_within = "30d"',
                                                             'keep_within = "0"'))
        (src / "new").write_bytes(b"n")
        r = env.run("backup", "b", check=0)
        assert r.returncode == 0, r.stderr
        assert not run.exists() and not list(attic.glob("*.jsonl"))
        aside = dst / ".btsoot" / "damaged" / f"attic-{run.name}"
        assert sorted(str(p.relative_to(aside)) for p in aside.rglob("*") if p.is_file()) == \
            ["d/@eaDir/x@SynoEAStream", "d/sub/.DS_Store"]
    else:
        # Deepest first: d/sub with the .DS_Store, then d with the rest; each kept whole.
        assert r.stderr.count("found what btsoot did not put there") == 2, r.stderr
        kept = {p.name for p in (dst / ".btsoot" / "damaged").rglob("*")}
        assert {".DS_Store", "@eaDir", "x@SynoEAStream"} <= kept
    assert "nothing" in env.run("backup", "b", check=0).stdout


def test_what_someone_changed_on_the_remote_is_set_aside_and_mended(block) -> None:
    """A file swapped for a folder, a folder for a file, a fifo planted, content
    removed: each is kept aside or sent again, and the mirror is exact."""
    env, src, dst = block
    build(src)
    (src / "e").mkdir()
    (src / "e" / "f").write_bytes(b"f in e")
    (src / "moved").mkdir()
    (src / "moved" / "m").write_bytes(b"m")
    (src / "solo").write_bytes(b"a file renamed alone")
    env.run("backup", "b", check=0)
    (dst / "x").unlink()
    (dst / "x").mkdir()  # a folder where the file x was
    (dst / "x" / "theirs").write_bytes(b"someone's")
    shutil.rmtree(dst / "e")
    (dst / "e").write_bytes(b"a file where the folder e was")
    os.unlink(dst / "d" / "y")
    os.mkfifo(dst / "d" / "y")  # a fifo where the file y was
    (dst / "moved" / "m").unlink()  # content gone that the day renames
    (dst / "solo").unlink()  # gone from the remote, renamed at the source
    os.rename(src / "solo", src / "solo2")
    shutil.rmtree(dst / "d" / "sub")  # a whole folder gone, and the source adds to it
    (src / "d" / "sub" / "added").write_bytes(b"added to a folder the remote lost")
    (src / "x").write_bytes(b"x changed")
    (src / "e" / "g").write_bytes(b"new in e")
    (src / "d" / "y").write_bytes(b"y changed")
    os.rename(src / "moved", src / "renamed")
    r = env.run("backup", "b", check=0)
    assert "Traceback" not in r.stderr
    kept = sorted(p.name for p in (dst / ".btsoot" / "damaged").rglob("*"))
    assert "theirs" in kept, kept
    assert (dst / "solo2").read_bytes() == b"a file renamed alone"
    assert (dst / "d" / "sub" / "z").read_bytes() == b"z in d/sub"  # sent again, second pass
    # A file removed inside a folder that then moved as a whole cannot be seen
    # without listing the remote: verify finds it, and the next backup sends it.
    assert not (dst / "renamed" / "m").exists()
    v = env.run("verify", "b", check=7)
    assert "renamed/m" in v.stdout
    env.run("backup", "b", check=0)
    assert_mirror(src, dst)
    env.run("verify", "b", check=0)
    assert "nothing" in env.run("backup", "b", check=0).stdout


def test_a_file_larger_than_the_remote_allows_is_listed_and_the_rest_committed(block) -> None:
    """FAT32 holds no file of 4 GiB or more: EFBIG. RLIMIT_FSIZE gives the same error
    here: the file is named (exit 3), everything else is backed up, and the next run
    says the same, neither more nor less."""
    import resource
    import subprocess
    import sys

    env, src, dst = block
    build(src)
    (src / "d" / "big.img").write_bytes(os.urandom(3 << 20))

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "btsoot", "backup", "b"], env=env.vars(),
                              capture_output=True, text=True, timeout=120, preexec_fn=limited)

    for _ in range(2):
        r = run()
        assert r.returncode == 3, (r.returncode, r.stderr)
        assert "cannot back up d/big.img: the remote cannot hold it: File too large" in r.stderr
        assert "Traceback" not in r.stderr
        assert not (dst / "d" / "big.img").exists()
        assert not [p for p in dst.rglob(".btsoot-tmp-*")]
        t = (src / "d").stat().st_mtime_ns
        (src / "d" / "big.img").rename(env.root / "big.img")
        os.utime(src / "d", ns=(t, t))
        try:
            assert_mirror(src, dst)  # everything else is there
        finally:
            (env.root / "big.img").rename(src / "d" / "big.img")
            os.utime(src / "d", ns=(t, t))
    env.run("backup", "b", check=0)  # without the limit it goes through
    assert_mirror(src, dst)
