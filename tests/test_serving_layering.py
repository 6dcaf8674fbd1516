"""The serving layer must never import torch: the server runs encoders through onnxruntime."""

import pkgutil
import subprocess
import sys

import serving


def test_no_module_of_serving_imports_torch():
    modules = sorted(m.name for m in pkgutil.walk_packages(serving.__path__, "serving."))
    expected = {"serving.encoders.base", "serving.encoders.idf", "serving.encoders.onnx", "serving.encoders.runtime"}
    assert expected <= set(modules)
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "import onnxruntime, tokenizers\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
