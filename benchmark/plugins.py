"""Methods (and anything else that registers itself) from outside the package.

``BENCHMARK_PLUGINS`` lists modules to import before the configuration is
composed, separated by commas: importable module names (``my_lab.toy_method``)
or paths to ``.py`` files. A plugin module registers what it adds, e.g.
``methods.register_method(MethodSpec("toy", "Toy", ToyDiT))``, and the method is
then a choice of ``method=`` like the built-in ones. The variable is inherited
by every process the suite starts (DDP workers, SLURM jobs), so a grid sees the
same methods as the command that submitted it.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

ENV = "BENCHMARK_PLUGINS"
_LOADED: set[str] = set()


def plugin_names(value: str | None = None) -> list[str]:
    text = os.environ.get(ENV, "") if value is None else value
    return [part.strip() for part in text.split(",") if part.strip()]


def _import(name: str) -> None:
    if name.endswith(".py"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{ENV} names {name}, which is not a file; give a module name or a .py path")
        module_name = f"benchmark_plugin_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name.split(".")[0] and exc.name != name:
            raise
        raise ModuleNotFoundError(f"{ENV} names module {name!r}, which cannot be imported; "
                                  "put its folder on PYTHONPATH or give the path of its .py file") from None


def load_plugins() -> list[str]:
    """Import every plugin named in ``BENCHMARK_PLUGINS`` once; returns the names imported now."""
    new = [name for name in plugin_names() if name not in _LOADED]
    for name in new:
        _import(name)
        _LOADED.add(name)
    return new
