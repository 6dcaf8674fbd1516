"""The server's YAML configuration: where the bundles and encoders are, and the limits it enforces.

Validated with pydantic so a typo or a wrong type is one clear line naming the key
(``collections.demo.dense.bundle: field required``), never a traceback from deep inside the
server. Relative paths resolve against the config file's folder, so a config and its bundles
can move together.

Example::

    host: 127.0.0.1
    port: 8000
    api_key_env: EMBEDX_API_KEY        # or api_key: "..." (the env var wins when both are set)
    limits: {max_k: 100, max_batch: 64, request_timeout_s: 10}
    batching: {max_batch: 32, max_wait_ms: 2}
    collections:
      demo:
        sparse: {bundle: bundles/demo, encoder: bundle}
        dense: {bundle: bundles/demo-dense, encoder: encoders/minilm}
        default_mode: hybrid
        fusion: {method: rrf, k: 60, depth: 100}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BUNDLE_ENCODER = "bundle"  # the bundle's own lexical query encoding (embedx.retrieval.encode_queries)
MODES = ("sparse", "dense", "hybrid")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ConfigError(ValueError):
    """A server config that cannot be read or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """What one request may ask for; anything larger is refused with 413 or 422."""

    max_body_bytes: int = Field(1 << 20, ge=256)
    max_query_chars: int = Field(1000, ge=1)
    max_k: int = Field(1000, ge=1)
    max_batch: int = Field(64, ge=1)
    max_vector_dim: int = Field(65536, ge=1)      # dense width, and non-zeros of a sparse vector
    max_fields: int = Field(32, ge=0)
    request_timeout_s: float = Field(10.0, gt=0)
    max_in_flight: int = Field(256, ge=1)          # concurrent searches before 503


class Batching(_Strict):
    """Micro-batching of encoder calls: requests that arrive together share one encoder call."""

    max_batch: int = Field(32, ge=1)               # texts per encoder call; 1 turns batching off
    max_wait_ms: float = Field(2.0, ge=0, le=1000)  # how long a batch waits to fill while the encoder is busy
    workers: int = Field(1, ge=1, le=64)           # encoder calls that may run at the same time


class Fusion(_Strict):
    """Hybrid fusion (``indexing.fusion``): RRF with an explicit k, or normalised linear."""

    method: Literal["rrf", "linear"] = "rrf"
    k: float = Field(60.0, ge=0)                    # RRF constant (Cormack et al. use 60)
    alpha: float = Field(0.5, ge=0, le=1)           # linear: weight of the sparse list
    norm: Literal["minmax", "zscore"] = "minmax"
    depth: int = Field(100, ge=1, le=10_000)        # candidates taken from each retriever


class Side(_Strict):
    """One retriever of a collection: a bundle and the encoder for its queries."""

    bundle: str
    encoder: str = BUNDLE_ENCODER  # an encoder folder, or "bundle" for the bundle's own encoding


class Collection(_Strict):
    sparse: Side | None = None
    dense: Side | None = None
    default_mode: Literal["sparse", "dense", "hybrid"] | None = None
    fusion: Fusion = Fusion()
    fields: list[str] | None = None  # stored fields returned when a request names none (None: all)

    @model_validator(mode="after")
    def _check(self) -> "Collection":
        if self.sparse is None and self.dense is None:
            raise ValueError("a collection needs a sparse or a dense entry (or both)")
        if self.dense is not None and self.dense.encoder == BUNDLE_ENCODER:
            raise ValueError("dense.encoder must be an encoder folder: only lexical bundles encode their own queries")
        mode = self.default_mode
        if mode in ("dense", "hybrid") and self.dense is None or mode in ("sparse", "hybrid") and self.sparse is None:
            raise ValueError(f"default_mode {mode!r} needs the {'dense' if self.dense is None else 'sparse'} entry")
        return self

    @property
    def mode(self) -> str:
        """The mode used when a request names none."""
        if self.default_mode:
            return self.default_mode
        return "hybrid" if self.sparse and self.dense else "sparse" if self.sparse else "dense"


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, min_length=8)
    api_key_env: str | None = None      # name of an environment variable holding the key
    admin: bool = True                  # the hot-swap endpoint (behind the API key when one is set)
    verify: Literal[True, False, "size"] = True  # bundle checks at load: sha256, sizes only, or none
    workers: int = Field(32, ge=1, le=1024)      # threads that run searches off the event loop
    # a single-query search on in-process indexes whose own work (encoding aside: a micro-batcher's)
    # took under this many ms (median of recent runs) runs on the event loop while nothing else is
    # in flight, saving a thread hop; 0: always the pool
    inline_max_ms: float = Field(5.0, ge=0, le=1000)
    faiss_threads: int | None = Field(1, ge=1)   # OpenMP threads per FAISS search (None: FAISS's default)
    limits: Limits = Limits()
    batching: Batching = Batching()
    collections: dict[str, Collection] = Field(min_length=1)
    base_dir: Path = Path(".")          # where relative paths resolve (set by load_config)

    @model_validator(mode="after")
    def _names(self) -> "ServerConfig":
        import re
        bad = [n for n in self.collections if not re.fullmatch(NAME_PATTERN, n)]
        if bad:
            raise ValueError(f"collection names must match {NAME_PATTERN} (letters, digits, _ . -), got {bad}")
        return self

    def resolve(self, path: str) -> Path:
        """A config path made absolute against the config file's folder (``~`` expanded)."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else (self.base_dir / p)

    def resolved_api_key(self) -> str | None:
        """The API key: from ``api_key_env`` when that variable is set and non-empty, else ``api_key``."""
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if value:
                if len(value) < 8:
                    raise ConfigError(f"the API key in ${self.api_key_env} is shorter than 8 characters")
                return value
        return self.api_key

    @property
    def default_collection(self) -> str | None:
        """The collection a request that names none searches: the only one, if there is one."""
        return next(iter(self.collections)) if len(self.collections) == 1 else None


def parse_config(data: Any, base_dir: str | os.PathLike = ".", source: str = "config") -> ServerConfig:
    """Validate a config mapping; relative paths will resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    if "base_dir" in data:
        raise ConfigError(f"{source}: 'base_dir' is not a config key (paths resolve against the file's folder)")
    try:
        return ServerConfig(**data, base_dir=Path(os.path.abspath(base_dir)))
    except ValidationError as e:
        raise ConfigError(f"{source}: " + "; ".join(_describe(err) for err in e.errors())) from None
    except TypeError as e:  # non-string keys at the top level
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | os.PathLike) -> ServerConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the server config {path}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    return parse_config(data, path.parent, str(path))


def _describe(err: dict) -> str:
    where = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__") or "(top level)"
    msg = err.get("msg", "invalid")
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    return f"{where}: {msg}"
