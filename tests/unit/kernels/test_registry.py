"""The one name -> object table (kernels.registry.Registry) behind methods, sizes, datasets,
loss weights, MoE and mask backends, benchmark providers and verbs."""
from __future__ import annotations

import pytest

from kernels.registry import Registry, UnknownName, closest


def test_lookup_register_and_listing():
    table = Registry("colour", {"red": 1, "green": 2})
    assert table.lookup("red") == 1 and table["green"] == 2
    assert table.register("blue", 3) == 3
    assert list(table) == ["red", "green", "blue"] and table.names() == ["red", "green", "blue"]
    assert len(table) == 3 and "blue" in table and "pink" not in table and 5 not in table
    assert Registry("colour", {"b": 1, "a": 2}, sort_names=True).names() == ["a", "b"]


def test_a_duplicate_name_is_refused_and_the_first_entry_kept():
    table = Registry("method", {"dit": 1})
    with pytest.raises(ValueError, match="method 'dit' is already registered"):
        table.register("dit", 2)
    assert table["dit"] == 1
    loose = Registry("size", {"XL": 1}, case_insensitive=True)
    with pytest.raises(ValueError, match="size 'xl' is already registered \\(as 'XL'\\)"):
        loose.register("xl", 2)


def test_an_unknown_name_gets_the_valid_ones_and_the_closest():
    table = Registry("method", {"dit": 1, "dtr": 2, "switch_dit": 3})
    with pytest.raises(UnknownName) as err:
        table.lookup("swtch_dit")
    assert str(err.value) == "unknown method 'swtch_dit' (did you mean 'switch_dit'?); valid: dit, dtr, switch_dit"
    assert isinstance(err.value, ValueError) and isinstance(err.value, KeyError)
    far = str(table.unknown("zzzzzz"))
    assert far == "unknown method 'zzzzzz'; valid: dit, dtr, switch_dit"
    assert str(Registry("verb").unknown("x")) == "unknown verb 'x'; valid: (none)"


def test_case_insensitive_lookup_returns_the_registered_spelling():
    sizes = Registry("size", {"S": 1, "XL": 4}, case_insensitive=True)
    assert sizes.canonical("xl") == "XL" and sizes["s"] == 1 and "Xl" in sizes
    assert Registry("size", {"XL": 4}).get("xl") is None  # exact by default


def test_closest_match_and_unregister():
    assert closest("Swich", ["switch_dit", "Switch"]) == "Switch"
    assert closest("qqq", ["dit"]) is None
    table = Registry("plugin", {"a": 1})
    table.decorator("b")(2)
    assert table.unregister("b") == 2 and list(table) == ["a"]
    with pytest.raises(ValueError, match="non-empty string name"):
        table.register("", 3)


def test_every_table_of_the_suite_is_a_registry():
    import methods
    from benchmark.cli import VERBS
    from benchmark.data.registry import DATASETS
    from benchmark.diffusion.loss_weights import LOSS_WEIGHTS
    from benchmark.speed.kernel_bench import PROVIDERS
    from kernels.moe import BACKENDS
    from kernels.moe_mask import MASK_BACKENDS

    tables = {"method": methods.METHODS, "size": methods.SIZES, "dataset": DATASETS, "loss weight": LOSS_WEIGHTS,
              "MoE backend": BACKENDS, "mask backend": MASK_BACKENDS, "provider": PROVIDERS, "verb": VERBS}
    for kind, table in tables.items():
        assert isinstance(table, Registry) and table.kind == kind
        with pytest.raises(UnknownName, match=f"unknown {kind} 'nope'"):
            table.lookup("nope")
