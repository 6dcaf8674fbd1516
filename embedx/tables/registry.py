"""Method name -> :class:`CompressedTable` class, and the one way to build a table from a budget.

The methods live in :mod:`embedx.tables.methods`; every concrete subclass exported there is
registered under its class attribute ``name`` ("full", "hash", "unified", ...). The module
is imported on first use, so importing the registry stays cheap. :func:`register` adds a
class from elsewhere (a plugin, a test).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any, Mapping, Sequence

from .base import Budget, CompressedTable, TableConfigError

log = logging.getLogger(__name__)

METHODS_MODULE = "embedx.tables.methods"
# Constructor arguments every table takes from the framework, never from hyperparameters.
_FRAMEWORK_ARGS = ("self", "cardinalities", "dim", "budget")

_registered: dict[str, type[CompressedTable]] = {}


def register(cls: type[CompressedTable]) -> type[CompressedTable]:
    """Register a table class under its ``name`` (usable as a class decorator)."""
    if not (inspect.isclass(cls) and issubclass(cls, CompressedTable)):
        raise TableConfigError(f"only CompressedTable subclasses can be registered, got {cls!r}")
    if not cls.name:
        raise TableConfigError(f"{cls.__name__} has no registry name (class attribute `name`)")
    known = _registered.get(cls.name)
    if known is not None and known is not cls:
        raise TableConfigError(f"table method {cls.name!r} is already registered by {known.__qualname__}")
    _registered[cls.name] = cls
    return cls


def _discovered() -> dict[str, type[CompressedTable]]:
    try:
        module = importlib.import_module(METHODS_MODULE)
    except ModuleNotFoundError as e:
        if e.name is not None and METHODS_MODULE.startswith(e.name):
            return {}
        raise
    found: dict[str, type[CompressedTable]] = {}
    for obj in vars(module).values():
        if (inspect.isclass(obj) and issubclass(obj, CompressedTable) and obj.name
                and not inspect.isabstract(obj)):
            other = found.get(obj.name)
            if other is not None and other is not obj:
                raise TableConfigError(f"{METHODS_MODULE} exports two classes named {obj.name!r}: "
                                       f"{other.__qualname__} and {obj.__qualname__}")
            found[obj.name] = obj
    return found


def methods() -> dict[str, type[CompressedTable]]:
    """Every known method, name -> class (the methods package first, then registered ones)."""
    return {**_discovered(), **_registered}


def available_methods() -> list[str]:
    return sorted(methods())


def get_method(name: str) -> type[CompressedTable]:
    known = methods()
    try:
        return known[name]
    except KeyError:
        raise TableConfigError(f"unknown table method {name!r}; available: "
                               f"{', '.join(sorted(known)) or '(none: embedx.tables.methods is missing)'}") from None


def method_hparams(cls: type[CompressedTable]) -> dict[str, inspect.Parameter] | None:
    """The hyperparameters a method's constructor accepts (None: it takes ``**kwargs``)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n: p for n, p in params.items() if n not in _FRAMEWORK_ARGS
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def check_hparams(cls: type[CompressedTable], hparams: Mapping[str, Any]) -> None:
    """Refuse hyperparameters the method does not take, naming the ones it does."""
    accepted = method_hparams(cls)
    if accepted is None:
        return
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise TableConfigError(f"table method {cls.name!r} has no hyperparameter(s) {', '.join(map(repr, unknown))}; "
                               f"it accepts: {', '.join(sorted(accepted)) or '(none)'}")


def resolve_budget(budget: Budget | float | int | None, cardinalities: Sequence[int], dim: int) -> Budget:
    """``None`` -> the full table; a float -> a compression rate (fraction kept, in (0, 1]);
    an int -> bytes; a :class:`Budget` as is."""
    if budget is None:
        return Budget.full(cardinalities, dim)
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, bool):
        raise TableConfigError(f"a budget is a rate (float) or bytes (int), got {budget!r}")
    if isinstance(budget, float):
        return Budget.from_rate(budget, cardinalities, dim)
    if isinstance(budget, int):
        if budget <= 0:
            raise TableConfigError(f"a budget in bytes must be positive, got {budget}")
        return Budget(budget)
    raise TableConfigError(f"a budget is a rate (float) or bytes (int), got {type(budget).__name__}")


def _floor(cls: type[CompressedTable], cardinalities: Sequence[int], dim: int, hparams: Mapping[str, Any]) -> int:
    params = inspect.signature(cls.min_bytes).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        hparams = {k: v for k, v in hparams.items() if k in params}
    return int(cls.min_bytes(cardinalities, dim, **hparams))


def build_table(method: str, cardinalities: Sequence[int], dim: int = 16,
                budget: Budget | float | int | None = None, **hparams: Any) -> CompressedTable:
    """Build a table of ``method`` sized to ``budget`` (see :func:`resolve_budget`).

    A budget below the method's floor (:meth:`CompressedTable.min_bytes`) is refused with
    the floor in the message, before anything is allocated.
    """
    cls = get_method(method)
    check_hparams(cls, hparams)
    cards = [int(c) for c in cardinalities]
    resolved = resolve_budget(budget, cards, dim)
    floor = _floor(cls, cards, dim, hparams)
    if resolved.bytes < floor:
        raise TableConfigError(f"table method {method!r} needs a budget of at least {floor:,} bytes for these "
                               f"{len(cards)} fields at dim {dim}; got {resolved.bytes:,} bytes")
    table = cls(cards, dim, resolved, **hparams)
    log.info("built %s table: %s fields, dim %d, budget %s B, memory %s B", method, len(cards), dim,
             f"{resolved.bytes:,}", f"{table.memory_bytes():,}")
    return table
