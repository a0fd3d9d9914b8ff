"""Only the compiled extension lives here; all metadata is in pyproject.toml.

The core is optional: where it cannot be built (no C compiler, no Python
headers, no Cython) the install warns and goes on without it, and btsoot runs on
its pure-Python twin, the same but several times slower. BTSOOT_REQUIRE_COMPILED=1
at build time makes that an error, so CI and release wheels never lack the core.
"""

import os
import sys
from importlib.util import find_spec

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

#: What a machine without a working compiler raises while building the core
#: (distutils' CCompilerError, DistutilsExecError, DistutilsPlatformError).
BUILD_ERRORS = (CCompilerError, ExecError, PlatformError)


def core() -> list[Extension]:
    """The Cython core as C sources; left as .pyx if Cython is missing (imported
    only here, so setup.py itself runs without it; build_ext then falls back)."""
    ext = Extension("btsoot._fastscan", ["src/btsoot/_fastscan.pyx"], extra_compile_args=["-O3"])
    if find_spec("Cython") is None:
        return [ext]
    from Cython.Build import cythonize

    return cythonize(
        [ext],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


class OptionalBuildExt(build_ext):
    """Build the core when this machine can; otherwise warn once and build
    nothing, rather than fail the whole install over an optional speed-up."""

    def run(self) -> None:
        required = os.environ.get("BTSOOT_REQUIRE_COMPILED") == "1"
        if find_spec("Cython") is None:
            if required:
                raise RuntimeError("BTSOOT_REQUIRE_COMPILED=1, but Cython is not installed")
            return self.fall_back("Cython is not installed")
        try:
            super().run()
        except BUILD_ERRORS as e:
            if required:
                raise
            self.fall_back(f"{type(e).__name__}: {e}"[:300])

    def fall_back(self, why: str) -> None:
        print(
            "\nbtsoot: WARNING: could not build the compiled core, installing without it\n"
            f"btsoot:   ({why})\n"
            "btsoot:   btsoot will run on its pure-Python core, several times slower.\n"
            "btsoot:   To get the core: install a C compiler and the Python headers, then\n"
            "btsoot:   pip install --force-reinstall --no-cache-dir btsoot (or use a wheel).\n"
            "btsoot:   Set BTSOOT_REQUIRE_COMPILED=1 to make this an error.\n",
            file=sys.stderr,
        )


setup(ext_modules=core(), cmdclass={"build_ext": OptionalBuildExt})
