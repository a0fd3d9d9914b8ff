"""What users install, installed as they would: the manylinux wheel `make wheel`
builds, into a fresh virtualenv that has neither Cython nor a C compiler; and the
sdist on such a machine, which must install the pure-Python core and say so
rather than fail. Each then runs the installed console script on a real tree."""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
#: The test environment's site folders: setuptools and Cython for the sdist build.
SITE = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
#: Settings that must not leak from the test run into the installs under test.
DROP = ("PYTHONPATH", "BTSOOT_PUREPYTHON", "BTSOOT_REQUIRE_COMPILED", "CC", "CXX", "LDSHARED",
        "PIP_REQUIRE_VIRTUALENV", "VIRTUAL_ENV")
WARNING = "btsoot: warning: the compiled core is not installed"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make wheel` with this interpreter: build, then auditwheel repair. No build
    isolation: the build tools are installed, and the test must not fetch them."""
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "wheel", f"PYTHON={sys.executable}",
                        f"DIST={out}", "BUILDFLAGS=--no-isolation"],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list(out.glob("btsoot-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out),
                        str(ROOT)], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    sdists = list(out.glob("btsoot-*.tar.gz"))
    assert len(sdists) == 1, sdists
    return sdists[0]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROP}
    env.update(extra)
    return env


def _no_compiler_path(venv_dir: Path) -> str:
    """A PATH with the venv's bin and the one outside tool btsoot runs (blkid, for
    a device's UUID; pip's calls to uname, lsb_release and rustc only fill its
    user agent): no cc, gcc, clang or ld."""
    tools = venv_dir.with_name(venv_dir.name + "-tools")
    tools.mkdir()
    for name in ("blkid",):
        found = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")
        if found:
            (tools / name).symlink_to(found)
    path = os.pathsep.join([str(venv_dir / "bin"), str(tools)])
    for cc in ("cc", "gcc", "clang", "ld", "x86_64-linux-gnu-gcc"):
        assert shutil.which(cc, path=path) is None, cc
    return path


def _runtime_closure(requires: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions that `requires` needs at run time, theirs too,
    markers evaluated for this interpreter (extras only where asked for)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [(req, "") for req in requires]
    while todo:
        text, extra = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in found:
            continue
        dist = found[name] = importlib.metadata.distribution(req.name)
        for wanted in ["", *req.extras]:
            todo += [(r, wanted) for r in dist.requires or []]
    return list(found.values())


def _runtime_deps(wheel: Path, folder: Path) -> Path:
    """One folder of symlinks to the top-level modules and packages (and metadata)
    of the runtime dependencies the wheel declares, nothing else: no Cython, no
    build tools. The wheel's own Requires-Dist, not the test environment's btsoot:
    that one may be an editable install from an older pyproject.toml."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    folder.mkdir()
    for dist in _runtime_closure(email.parser.Parser().parsestr(meta).get_all("Requires-Dist") or []):
        tops = {Path(f).parts[0] for f in dist.files or []}
        tops |= set((dist.read_text("top_level.txt") or "").split())
        for top in tops - {"..", "__pycache__"}:
            target = Path(dist.locate_file(top))
            if target.exists() and not (folder / top).exists():
                (folder / top).symlink_to(target)
    return folder


def _venv(where: Path, paths: list[str]) -> Path:
    """A fresh venv whose site folder also holds `paths`, added as plain paths (their
    own .pth files, an editable btsoot's among them, are not run)."""
    venv.create(where, with_pip=False)
    py = where / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_test_deps.pth").write_text("".join(p + "\n" for p in paths))
    return py


def _pip_install(py: Path, what: Path, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess:
    """This environment's pip, run by the venv's interpreter (`--python`): the venv
    needs no pip of its own, and gets no setuptools from ensurepip either.
    --no-cache-dir: a wheel built on an earlier install must not stand in for a build."""
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                           "--no-cache-dir", "--disable-pip-version-check", *flags, str(what)],
                          env=env, capture_output=True, text=True, timeout=600)


def _backup_roundtrip(exe: Path, tmp_path: Path, env: dict[str, str]) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_bytes(b"hello\n")
    (src / "b.bin").write_bytes(bytes(range(256)) * 100)
    dst.mkdir()
    r = subprocess.run([str(exe), "add", "w", str(src), str(dst)], env=env, capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe), "backup", "w"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (dst / "sub" / "a.txt").read_bytes() == b"hello\n"
    assert (dst / "b.bin").read_bytes() == bytes(range(256)) * 100


def test_wheel_contents(wheel: Path) -> None:
    assert re.fullmatch(r"btsoot-[\w.]+-cp\d+-cp\d+-manylinux_\d+_\d+_\w+\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        tags = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert re.search(r"^Tag: cp\d+-cp\d+-manylinux_\d+_\d+_", tags, re.M), tags
    assert any(n.startswith("btsoot/_fastscan") and n.endswith(".so") for n in names), names
    assert "btsoot/_fastscan.pyi" in names
    assert "btsoot/py.typed" in names
    assert not any(n.endswith(".c") for n in names), "generated C must not ship"


def test_wheel_installs_and_runs_without_build_tools(wheel: Path, tmp_path: Path) -> None:
    venv_dir = tmp_path / "venv"
    deps = _runtime_deps(wheel, tmp_path / "deps")
    assert {"xxhash", "orjson", "click", "rich", "markdown_it", "mdurl", "pygments"} <= {
        p.name for p in deps.iterdir()}
    py = _venv(venv_dir, [str(deps)])
    env = _env(PATH=_no_compiler_path(venv_dir), BTSOOT_CONFIG=str(tmp_path / "c.toml"),
               BTSOOT_STATE=str(tmp_path / "state"))
    r = subprocess.run([str(py), "-c", "import Cython"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'Cython'" in r.stderr, r.stderr

    r = _pip_install(py, wheel, env)
    assert r.returncode == 0, r.stdout + r.stderr
    run = dict(env, BTSOOT_REQUIRE_COMPILED="1")
    exe = venv_dir / "bin" / "btsoot"
    v = subprocess.run([str(exe), "--version"], env=run, capture_output=True, text=True,
                       cwd=tmp_path, check=True)
    assert "btsoot" in v.stdout and "0." in v.stdout and "(compiled core)" in v.stdout
    impl = subprocess.run([str(py), "-c", "import btsoot, btsoot.scanner as s; "
                           "print(s.IMPLEMENTATION, s.FALLBACK, s.fallback_warning(), btsoot.__file__)"],
                          env=run, capture_output=True, text=True, cwd=tmp_path, check=True)
    assert impl.stdout.startswith("compiled False None ") and str(venv_dir) in impl.stdout
    _backup_roundtrip(exe, tmp_path, run)


def test_sdist_without_compiler_falls_back_to_pure_core(sdist: Path, tmp_path: Path) -> None:
    with tarfile.open(sdist) as t:
        assert any(n.endswith("/setup.py") for n in t.getnames())
    # The build needs setuptools and Cython: the test environment's. The compiler
    # is gone from PATH, and named as /bin/false wherever setuptools would look.
    venv_dir = tmp_path / "venv"
    py = _venv(venv_dir, SITE)
    nocc = dict(PATH=_no_compiler_path(venv_dir), CC="/bin/false", CXX="/bin/false",
                LDSHARED="/bin/false")
    env = _env(**nocc, BTSOOT_CONFIG=str(tmp_path / "c.toml"), BTSOOT_STATE=str(tmp_path / "state"))

    r = _pip_install(py, sdist, env, "--no-build-isolation", "-v")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "could not build the compiled core" in r.stdout + r.stderr
    pkg = Path(subprocess.run([str(py), "-c", "import btsoot; print(btsoot.__file__)"], env=env,
                              capture_output=True, text=True, check=True).stdout.strip()).parent
    assert pkg.is_relative_to(venv_dir) and (pkg / "_pyscan.py").is_file(), pkg
    assert not list(pkg.glob("_fastscan*.so")), list(pkg.iterdir())

    exe = venv_dir / "bin" / "btsoot"
    v = subprocess.run([str(exe), "--version"], env=env, capture_output=True, text=True, check=True)
    assert "pure-Python core" in v.stdout, v.stdout
    # Every command says so, once, on stderr (stdout stays the command's own).
    ls = subprocess.run([str(exe), "list", "--json"], env=env, capture_output=True, text=True, check=True)
    assert ls.stdout.strip() == "[]" and ls.stderr.count(f"{WARNING} (built without a C compiler?)") == 1
    # Importing says nothing: the warning is the CLI's to give.
    s = subprocess.run([str(py), "-c", "import btsoot.scanner as s; "
                        "print(s.FALLBACK, s.fallback_warning()); print(s.fallback_warning())"],
                       env=env, capture_output=True, text=True, check=True)
    assert s.stdout.splitlines() == [f"True {WARNING} (built without a C compiler?): using the "
                                     "pure-Python core, several times slower; install a wheel, "
                                     "or reinstall with a compiler", "None"], s.stdout
    assert s.stderr == ""
    # Asked for, the pure core is no fallback; and where the compiled one is required, it is an error.
    s = subprocess.run([str(py), "-c", "import btsoot.scanner as s; print(s.FALLBACK, s.fallback_warning())"],
                       env=dict(env, BTSOOT_PUREPYTHON="1"), capture_output=True, text=True, check=True)
    assert s.stdout.split() == ["False", "None"]
    s = subprocess.run([str(py), "-c", "import btsoot.scanner"], env=dict(env, BTSOOT_REQUIRE_COMPILED="1"),
                       capture_output=True, text=True)
    assert s.returncode != 0 and "_fastscan" in s.stderr, s.stderr
    _backup_roundtrip(exe, tmp_path, env)

    # The same install where the build must give the compiled core fails instead.
    strict_dir = tmp_path / "strict"
    strict_py = _venv(strict_dir, SITE)
    r = _pip_install(strict_py, sdist, _env(**dict(nocc, PATH=_no_compiler_path(strict_dir)),
                                            BTSOOT_REQUIRE_COMPILED="1"), "--no-build-isolation")
    assert r.returncode != 0, r.stdout + r.stderr
    assert "/bin/false" in r.stdout + r.stderr, r.stdout + r.stderr
    assert not (strict_dir / "bin" / "btsoot").exists()
