"""llama.cpp as a peer for the benchmarks: find it, or build it from source into a cache folder when asked.

Never used by CI or the tests. The source comes from a llama.cpp checkout (--llama-cpp-src) or from the
`llama-cpp-python` sdist on PyPI, which vendors llama.cpp (`pip download` fetches it; cmake and a C++
compiler build it, a few minutes on 2 cores). The binaries land in ~/.cache/lmstack/llama.cpp/<source>/.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("LMSTACK_CACHE", Path.home() / ".cache" / "lmstack")) / "llama.cpp"
TARGETS = ("llama-batched-bench", "llama-server", "llama-simple")


def add_args(ap) -> None:
    g = ap.add_argument_group("llama.cpp peer")
    g.add_argument("--llama-cpp", default=None, metavar="DIR|build",
                   help="a folder with llama.cpp's binaries (llama-batched-bench, llama-server), or 'build' to build "
                        f"them into {CACHE} from --llama-cpp-src or the llama-cpp-python sdist (default: skip the peer)")
    g.add_argument("--llama-cpp-src", default=None, help="a llama.cpp source tree to build from")


def _sdist_source() -> Path:
    dl = CACHE / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    have = sorted(glob.glob(str(dl / "llama_cpp_python-*.tar.gz")))
    if not have:
        print("downloading the llama-cpp-python sdist (it vendors llama.cpp's source) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "llama-cpp-python", "-d", str(dl)], check=True)
        have = sorted(glob.glob(str(dl / "llama_cpp_python-*.tar.gz")))
    archive = Path(have[-1])
    root = dl / archive.name.removesuffix(".tar.gz")
    if not root.exists():
        with tarfile.open(archive) as t:
            t.extractall(dl, filter="data")
    return root / "vendor" / "llama.cpp"


def binaries(spec: str | None, src: str | None = None) -> Path | None:
    """The folder holding llama.cpp's binaries, building them first when spec is 'build'; None: no peer."""
    if spec is None:
        return None
    if spec != "build":
        d = Path(spec)
        for name in TARGETS:
            if not (d / name).exists():
                raise SystemExit(f"--llama-cpp {d}: no {name} there")
        return d
    source = Path(src) if src else _sdist_source()
    tag = "custom-" + source.resolve().name if src else source.resolve().parent.parent.name
    flags = ["-DGGML_NATIVE=ON"]
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " amx_tile" in cpu:
        # A native build on a VM that advertises AMX dies at start-up (Illegal instruction / segfault in
        # llama-server and llama-batched-bench, 2-core Xeon VM, 2026-12-07): the AVX-512 paths without AMX.
        flags = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
                 "-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON"]
        tag += "-noamx"
    build = CACHE / tag / "build"
    out = build / "bin"
    if all((out / t).exists() for t in TARGETS):
        return out
    for tool in ("cmake",):
        if shutil.which(tool) is None:
            raise SystemExit(f"building llama.cpp needs {tool}")
    print(f"building llama.cpp from {source} into {build} (a few minutes) ...", file=sys.stderr)
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                    *flags, "-DLLAMA_BUILD_TESTS=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", *TARGETS],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def version(bin_dir: Path) -> str:
    r = subprocess.run([str(bin_dir / "llama-server"), "--version"], capture_output=True, text=True)
    return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else "unknown"
