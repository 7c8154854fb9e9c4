"""llama.cpp's own ``llama-server``, built once from the vendored source of the same
llama-cpp-python sdist SAGE's engine runs on (so both use the same llama.cpp), and cached
under ``$SAGE_CACHE_DIR/bin`` (default ``~/.cache/sage/bin``).

``python benchmarks/_llama_server.py`` builds it (a few minutes on 2 cores, once) and
prints its path. The build needs cmake, a C++ compiler and the package index (for the sdist);
it downloads nothing else (the server's web UI is left out).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from sage.inference.engines.gguf import cache_root

VERSION = "0.3.36"  # the llama-cpp-python the Makefile installs


def binary() -> Path:
    return cache_root() / "bin" / f"llama-server-{VERSION}"


def ensure() -> Path:
    """The cached ``llama-server``; built first when missing (says so while it builds)."""
    target = binary()
    if target.is_file():
        return target
    started = time.monotonic()
    print(
        f"building llama-server from llama-cpp-python {VERSION}'s vendored llama.cpp "
        "(once; a few minutes on 2 cores)...",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="llama-server-") as scratch:
        work = Path(scratch)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={VERSION}",
                "-d",
                str(work),
            ],
            check=True,
        )
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = work / "build"
        subprocess.run(
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(build),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_BUILD_SERVER=ON",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_USE_PREBUILT_UI=OFF",
                "-DLLAMA_BUILD_UI=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [
                "cmake",
                "--build",
                str(build),
                "--target",
                "llama-server",
                "-j",
                str(os.cpu_count() or 2),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        built = next(build.glob("**/bin/llama-server"))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copy2(built, partial)
        partial.rename(target)
    print(f"llama-server built in {time.monotonic() - started:.0f} s: {target}", file=sys.stderr)
    return target


if __name__ == "__main__":
    print(ensure())
