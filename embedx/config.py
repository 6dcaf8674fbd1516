"""Config helpers shared by the training packages (``embedx.tables``, ``embedx.sparse``).

Each package keeps its own YAML schema and error class; what they share lives here so the
two read files, parse ``a.b=c`` overrides and check keys the same way without one package
importing the other:

* :func:`read_config`: a YAML file (or a given mapping) with overrides applied;
* :func:`apply_overrides`: dotted-path overrides whose values are parsed as YAML;
* :func:`build_dataclass` / :func:`check_signature`: refuse unknown keys, naming the accepted ones;
* :func:`reraise_as`: turn a :class:`ConfigError` from here into a package's own error class.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says what and where. The packages'
    own config errors subclass it, so one ``except`` catches every config problem."""


@contextlib.contextmanager
def reraise_as(error: type[ConfigError]) -> Iterator[None]:
    """Re-raise a :class:`ConfigError` raised here as ``error`` (same message), so a package's
    callers see only its own error class. Works as a ``with`` block or a function decorator."""
    try:
        yield
    except ConfigError as e:
        if isinstance(e, error):
            raise
        raise error(str(e)) from None


# ---------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.2), not as a string."""


_FLOAT = re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_value(text: str) -> Any:
    """A value as YAML reads it (so overrides and files agree on types)."""
    return yaml.load(text, Loader=_Loader)


def parse_overrides(overrides: Iterable[str]) -> list[tuple[list[str], Any]]:
    """``["a.b=1"]`` -> ``[(["a", "b"], 1)]``; a malformed item is a :class:`ConfigError`."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ConfigError(f"an override is key.sub=value, got {item!r}")
        out.append(([p.strip() for p in parts], parse_value(value)))
    return out


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set ``a.b=c`` paths in a raw config mapping (a copy), creating missing blocks."""
    return apply_parsed(raw, parse_overrides(overrides))


def apply_parsed(raw: dict[str, Any], overrides: Iterable[tuple[list[str], Any]]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``(path parts, value)`` set (see :func:`set_path`)."""
    raw = _deepcopy(raw)
    for parts, value in overrides:
        set_path(raw, parts, value)
    return raw


def set_path(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    """``raw[parts[0]][parts[1]]... = value`` in place, creating missing blocks."""
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {'.'.join(parts[:i + 1])} is not a block")
        node = child
    node[parts[-1]] = value


def _deepcopy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deepcopy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deepcopy(v) for v in obj]
    return obj


def read_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                raw: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The raw mapping of a YAML file at ``path`` (or of ``raw``) with overrides applied;
    exactly one of ``path`` and ``raw`` is given. Validating it is the caller's job."""
    if (path is None) == (raw is None):
        raise ConfigError("give a config path or a raw mapping (one of them)")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config file at {path}")
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a config is a mapping at the top level")
    return apply_overrides(dict(raw), overrides)


# ---------------------------------------------------------------- types
#: scalar annotation -> (accepted Python types, what the error says was expected); a YAML
#: true/false is never taken for a number
_SCALARS = {bool: ((bool,), "true/false"), int: ((int,), "an integer"), float: ((int, float), "a number"),
            str: ((str,), "a string")}


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against a simple annotation (int, float, bool, str, X | None, list[X],
    tuple[X, ...], dict, Any) and return it normalised (ints accepted as floats)."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp in _SCALARS:
        accepted, expected = _SCALARS[tp]
        if not isinstance(value, accepted) or (tp is not bool and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {expected}, got {value!r}")
        return float(value) if tp is float else value
    return value  # an annotation this checker does not know: trust the constructor


def build_dataclass(cls: type, raw: Mapping[str, Any] | None, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"expected some of: {', '.join(sorted(fields))}")
    missing = [n for n, f in fields.items() if n not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(map(repr, missing))}")
    return cls(**{k: coerce(v, hints[k], f"{where}.{k}") for k, v in raw.items()})


def check_signature(fn: Any, params: Mapping[str, Any], where: str, skip: Sequence[str] = ()) -> None:
    """Refuse keys ``fn`` (a class or callable) does not accept; coerce-check annotated ones."""
    sig = inspect.signature(fn)
    ps = {n: p for n, p in sig.parameters.items() if n not in ("self", *skip)}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps.values()):
        return
    unknown = sorted(set(params) - set(ps))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"expected some of: {', '.join(sorted(ps)) or '(none)'}")
    try:
        hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    except Exception:  # unresolvable annotations: let the constructor judge
        hints = {}
    for k, v in params.items():
        if k in hints:
            coerce(v, hints[k], f"{where}.{k}")
