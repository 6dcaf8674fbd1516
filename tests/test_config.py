"""The config helpers shared by embedx.tables and embedx.sparse (embedx.config)."""

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from embedx.config import (ConfigError, apply_overrides, build_dataclass, check_signature, parse_overrides,
                           parse_value, read_config, reraise_as)


@dataclass
class _Block:
    name: str
    lr: float = 1e-3
    deep: list[int] = field(default_factory=list)
    cap: int | None = None


def test_overrides_are_parsed_as_yaml_on_a_copy():
    assert parse_value("1e-3") == 0.001 and parse_value("[1, 2]") == [1, 2] and parse_value("null") is None
    assert parse_overrides([" a.b =x"]) == [(["a", "b"], "x")]
    raw = {"a": {"b": 1}, "l": [1]}
    out = apply_overrides(raw, ["a.c.d=5", "t.lr=2e-5", "l=[3, 4]", "a.b=true"])
    assert out == {"a": {"b": True, "c": {"d": 5}}, "l": [3, 4], "t": {"lr": 2e-5}}
    assert raw == {"a": {"b": 1}, "l": [1]}


@pytest.mark.parametrize("override,message", [
    ("a.b", "an override is key.sub=value, got 'a.b'"),
    ("a..b=1", "an override is key.sub=value"),
    ("a.b.c=1", "override a.b.c: a.b is not a block"),
])
def test_bad_overrides_say_why(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"a": {"b": 1}}, [override])


def test_build_dataclass_checks_keys_and_types():
    b = build_dataclass(_Block, {"name": "x", "lr": 1, "deep": [4, 2]}, "model")
    assert b == _Block("x", 1.0, [4, 2]) and isinstance(b.lr, float)
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) 'lrr'; expected some of: cap, deep, lr, name"):
        build_dataclass(_Block, {"name": "x", "lrr": 1}, "model")
    with pytest.raises(ConfigError, match=r"model: missing required key\(s\) 'name'"):
        build_dataclass(_Block, None, "model")
    with pytest.raises(ConfigError, match=r"model.deep\[1\]: expected an integer, got 'a'"):
        build_dataclass(_Block, {"name": "x", "deep": [1, "a"]}, "model")
    with pytest.raises(ConfigError, match="model.cap: expected an integer, got True"):
        build_dataclass(_Block, {"name": "x", "cap": True}, "model")
    with pytest.raises(ConfigError, match="model: expected a mapping"):
        build_dataclass(_Block, [1], "model")


def test_check_signature_lists_accepted_keys():
    def make(table, width: int = 2, act: str = "relu"):
        return table

    check_signature(make, {"width": 3}, "m", skip=("table",))
    with pytest.raises(ConfigError, match="m: unknown key.*'depth'; expected some of: act, width"):
        check_signature(make, {"depth": 3}, "m", skip=("table",))
    with pytest.raises(ConfigError, match="m.width: expected an integer"):
        check_signature(make, {"width": "wide"}, "m", skip=("table",))


def test_read_config_file_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("a: {lr: 1e-3}\n")
    assert read_config(p, ["a.n=2"]) == {"a": {"lr": 0.001, "n": 2}}
    assert read_config(raw={"a": 1}, overrides=["a=2"]) == {"a": 2}
    with pytest.raises(ConfigError, match="one of them"):
        read_config()
    with pytest.raises(ConfigError, match="one of them"):
        read_config(p, raw={})
    with pytest.raises(ConfigError, match="no config file at"):
        read_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="a config is a mapping at the top level"):
        read_config(tmp_path / "list.yaml")


class _Mine(ConfigError):
    pass


def test_reraise_as_converts_only_shared_errors():
    wrapped = reraise_as(_Mine)(apply_overrides)
    assert wrapped.__name__ == "apply_overrides"
    with pytest.raises(_Mine, match="an override is key.sub=value") as info:
        wrapped({}, ["nope"])
    assert type(info.value) is _Mine
    with pytest.raises(KeyError):
        with reraise_as(_Mine):
            raise KeyError("not a config error")
    original = _Mine("kept")
    with pytest.raises(_Mine) as info:
        with reraise_as(_Mine):
            raise original
    assert info.value is original


def test_package_errors_share_the_base_class():
    pytest.importorskip("torch")
    from embedx.sparse.config import SparseConfigError, load_config as sparse_load
    from embedx.tables.base import TableConfigError
    from embedx.tables.config import ConfigError as TablesConfigError
    from embedx.tables.config import apply_overrides as tables_overrides

    assert issubclass(TablesConfigError, TableConfigError) and issubclass(TablesConfigError, ConfigError)
    assert issubclass(SparseConfigError, ConfigError) and issubclass(SparseConfigError, ValueError)
    with pytest.raises(TablesConfigError, match="is not a block"):
        tables_overrides({"a": 1}, ["a.b=2"])
    with pytest.raises(SparseConfigError, match="is not a block"):
        sparse_load(raw={"a": 1}, overrides=["a.b=2"])


def test_sparse_training_does_not_import_tables():
    pytest.importorskip("torch")
    code = ("import sys, embedx.sparse.config, embedx.sparse.train\n"
            "bad = sorted(m for m in sys.modules if m.startswith('embedx.tables'))\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
