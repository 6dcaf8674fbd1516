"""Embedding table methods, one module per family. Each class's ``name`` is its registry key."""

from .compositional import QRTable
from .dhe import DHETable
from .full import FullTable
from .hashing import HashTable, SharedHashTable
from .mde import MDETable
from .quantized import ALPTTable, Int8Table, Int16Table
from .robe import RobeTable
from .tt_rec import TTRecTable
from .unified import UnifiedTable

METHODS = {cls.name: cls for cls in (
    FullTable, HashTable, SharedHashTable, QRTable, TTRecTable, DHETable, RobeTable, MDETable,
    Int8Table, Int16Table, ALPTTable, UnifiedTable)}

__all__ = ["METHODS", "FullTable", "HashTable", "SharedHashTable", "QRTable", "TTRecTable", "DHETable",
           "RobeTable", "MDETable", "Int8Table", "Int16Table", "ALPTTable", "UnifiedTable"]
