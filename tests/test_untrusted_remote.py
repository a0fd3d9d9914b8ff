"""A remote changed behind btsoot's back: nothing outside it is ever written, and
the mirror comes back exact.

Each case backs up, then plays a hostile NAS (a folder of the remote swapped for
a link to somewhere else), changes the source below that folder, and backs up
again. The victim tree and the source are compared, bytes, modes and times,
before and after.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import tree_state


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
              "chain": dst / "hop"}[where]
    if where == "chain":
        (dst / "hop").symlink_to(victim)
    swapped = dst / ".swapped"
    os.rename(dst / "d", swapped)  # what stood there goes away (kept, to compare)
    (dst / "d").symlink_to(target)

    day(src)
    outside = {"victim": tree_state(victim, ()), "other": tree_state(src / "other", ())}
    top = (dst / "x").read_bytes()
    r = env.run("backup", "b")
    assert "Traceback" not in r.stderr, r.stderr
    assert tree_state(victim, ()) == outside["victim"]
    assert tree_state(src / "other", ()) == outside["other"]
    assert (dst / "x").read_bytes() == top
    assert (dst / "d").is_symlink() or r.returncode == 0
    assert r.returncode in (0, 3, 6), (r.returncode, r.stderr)
