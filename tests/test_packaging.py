"""The wheel is what users install: build it, install it into a fresh virtualenv,
and run the installed console script against a real tree."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # No build isolation: the build tools (setuptools, Cython) are already installed,
    # and CI should not depend on fetching them again.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, timeout=600)
    wheels = list(out.glob("btsoot-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("btsoot/_fastscan") and n.endswith(".so") for n in names), names
    assert "btsoot/_fastscan.pyi" in names
    assert "btsoot/py.typed" in names
    assert not any(n.endswith(".c") for n in names), "generated C must not ship"


def test_wheel_installs_and_runs(wheel: Path, tmp_path: Path) -> None:
    venv_dir = tmp_path / "venv"
    venv.create(venv_dir, with_pip=True)
    py = venv_dir / "bin" / "python"
    # The runtime dependencies come from the test environment's site folders, added
    # as plain paths (no download; and their .pth files, an editable btsoot's
    # among them, are not run), after the new environment's own.
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "_test_deps.pth").write_text("".join(p + "\n" for p in sorted(ours)))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                    str(wheel)], check=True, timeout=300)
    exe = venv_dir / "bin" / "btsoot"
    env = dict(os.environ, BTSOOT_CONFIG=str(tmp_path / "c.toml"),
               BTSOOT_STATE=str(tmp_path / "state"), BTSOOT_REQUIRE_COMPILED="1")
    env.pop("PYTHONPATH", None)
    env.pop("BTSOOT_PUREPYTHON", None)
    v = subprocess.run([str(exe), "--version"], env=env, capture_output=True, text=True,
                       cwd=tmp_path, check=True)
    assert "btsoot" in v.stdout and "0." in v.stdout and "(compiled core)" in v.stdout
    impl = subprocess.run([str(py), "-c", "import btsoot, btsoot.scanner as s; "
                           "print(s.IMPLEMENTATION, btsoot.__file__)"],
                          env=env, capture_output=True, text=True, cwd=tmp_path, check=True)
    assert impl.stdout.startswith("compiled ") and str(venv_dir) in impl.stdout

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_bytes(b"hello\n")
    (src / "b.bin").write_bytes(bytes(range(256)) * 100)
    dst.mkdir()
    subprocess.run([str(exe), "add", "w", str(src), str(dst)], env=env, check=True,
                   capture_output=True, cwd=tmp_path)
    r = subprocess.run([str(exe), "backup", "w"], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (dst / "sub" / "a.txt").read_bytes() == b"hello\n"
    assert (dst / "b.bin").read_bytes() == bytes(range(256)) * 100
