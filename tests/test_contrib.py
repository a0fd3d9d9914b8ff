"""contrib/: the systemd units and the cron line, checked as what they are.

The units go through `systemd-analyze verify` (with ExecStart pointed at this
checkout's btsoot, as an install would have it), and the very commands they
run are run here against a real block."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Env

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def btsoot_exe(tmp_path: Path) -> str:
    """An executable that runs this checkout's btsoot the way tests do."""
    exe = tmp_path / "btsoot"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m btsoot \"$@\"\n")
    exe.chmod(0o755)
    return str(exe)


def test_the_systemd_units_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (see scripts/test.sh for the Debian packages)")
    exe = btsoot_exe(tmp_path)
    for name in ("btsoot@.service", "btsoot@.timer"):
        text = (CONTRIB / name).read_text()
        (tmp_path / name.replace("@", "@photos")).write_text(text.replace("/usr/local/bin/btsoot", exe))
    p = subprocess.run([tool, "verify", "--man=no", str(tmp_path / "btsoot@photos.service"),
                        str(tmp_path / "btsoot@photos.timer")], capture_output=True, text=True)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stderr
    service = (CONTRIB / "btsoot@.service").read_text()
    for must in ("ProtectSystem=strict", "ReadWritePaths=/var/lib/btsoot", "NoNewPrivileges=yes",
                 "SuccessExitStatus=3", "Environment=BTSOOT_STATE=/var/lib/btsoot"):
        assert re.search(rf"^{re.escape(must)}$", service, re.M), must


def test_the_commands_they_run_back_up_a_block(env: Env, tmp_path: Path) -> None:
    src, dst = env.root / "src", env.root / "dst"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    dst.mkdir()
    env.run("add", "photos", src, dst, check=0)
    service = (CONTRIB / "btsoot@.service").read_text()
    (execstart,) = re.findall(r"^ExecStart=/usr/local/bin/btsoot (.*)$", service, re.M)
    p = env.run(*execstart.replace("%i", "photos").split(), check=0)
    assert p.stdout == "" and p.stderr == ""  # --quiet: silent when all is well
    assert (dst / "a").read_bytes() == b"a"
    (src / "b").write_bytes(b"b")
    (line,) = [ln for ln in (CONTRIB / "btsoot.cron").read_text().splitlines()
               if ln and not ln.startswith("#") and "=" not in ln.split()[0]]
    fields = line.split()
    assert len(fields) >= 8 and fields[5] == "root" and fields[6] == "/usr/local/bin/btsoot"
    p = env.run(*fields[7:], check=0)
    assert p.stdout == "" and (dst / "b").read_bytes() == b"b"


def test_shell_completion_as_the_readme_says(env: Env) -> None:
    p = env.run(check=0, extra_env={"_BTSOOT_COMPLETE": "bash_source"})
    assert "_btsoot_completion()" in p.stdout
    p = env.run(check=0, extra_env={"_BTSOOT_COMPLETE": "bash_complete", "COMP_WORDS": "btsoot ba",
                                    "COMP_CWORD": "1"})
    assert p.stdout.split() == ["plain,backup"]
