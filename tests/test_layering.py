"""The index layer must never import torch (the server loads it without torch)."""

import pkgutil
import subprocess
import sys

import indexing


def test_no_module_of_indexing_imports_torch():
    modules = sorted(m.name for m in pkgutil.walk_packages(indexing.__path__, "indexing."))
    assert {"indexing.dense", "indexing.sparse", "indexing.bundle", "indexing.lucene"} <= set(modules)
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
