"""Plugins: the user's own Python modules, imported before a study is validated and in every Ray worker.

A study's ``plugins:`` list names modules importable from ``sys.path`` (``my_package.my_distillers``) or
``.py`` files (a path ending in ``.py``, relative to the study file's folder). Importing a plugin runs its
``@register`` decorators, so its distillers can be named in ``distiller:``. Each module is imported once per
process: a module already imported (under any name, from the same file) is reused, never executed again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


class PluginError(ValueError):
    """A plugin could not be imported. ``index`` is its position in the ``plugins`` list."""

    def __init__(self, index: int, message: str):
        self.index = index
        super().__init__(message)


def is_file_plugin(entry: str) -> bool:
    return entry.endswith(".py")


def resolve_plugins(entries: Sequence[str], base: Path) -> list[str]:
    """File plugins as absolute paths (relative ones are relative to ``base``); module names unchanged."""
    return [str((base / entry).resolve()) if is_file_plugin(entry) else entry for entry in entries]


def _loaded_from(origin: str) -> ModuleType | None:
    """A module already imported from ``origin`` under whatever name (so its classes are not registered twice)."""
    target = Path(origin).resolve()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve() == target:
            return module
    return None


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    module = _loaded_from(str(path))
    if module is not None:
        return module
    # A stable name per file, so a worker that imports the same file gets the same module name.
    name = f"nas_kd_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_name(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin:
        module = _loaded_from(spec.origin)
        if module is not None:
            return module
    return importlib.import_module(name)


def import_plugins(entries: Sequence[str]) -> list[ModuleType]:
    """Import each plugin (entries as ``resolve_plugins`` returns them); raises PluginError on the first failure."""
    modules = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry.strip():
            raise PluginError(index, "a plugin is a module name (my_package.my_module) or a .py file path")
        try:
            modules.append(_import_file(Path(entry)) if is_file_plugin(entry) else _import_name(entry))
        except Exception as error:
            first_line = next(iter(str(error).splitlines()), "")
            raise PluginError(index, f"cannot import {entry!r} ({type(error).__name__}: {first_line})") from None
    return modules
