"""The shape of an output, for ``run --test``: what is in it, not its numbers.

Names, types, and for histograms their axes (name, kind, bins or categories) and storage,
so a quick test shows whether the processor fills what it should before a long run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.markup import escape
from rich.tree import Tree

from coffea_hpc._text import count

__all__ = ["structure"]

_MAX_ITEMS = 50


def structure(output: Any, label: str = "output") -> Tree:
    """A tree of ``output``'s names and types (mappings are walked; leaves described)."""
    tree = Tree(f"{escape(label)}: {escape(_describe(output))}", highlight=False)
    _fill(tree, output)
    return tree


def _fill(tree: Tree, value: Any) -> None:
    if isinstance(value, Mapping):
        for i, (key, item) in enumerate(value.items()):
            if i == _MAX_ITEMS:
                tree.add(f"... {len(value) - _MAX_ITEMS} more", highlight=False)
                break
            _fill(tree.add(escape(f"{key}: {_describe(item)}"), highlight=False), item)
    elif isinstance(value, list | tuple) and value and len(value) <= 10:
        for i, item in enumerate(value):
            _fill(tree.add(escape(f"[{i}]: {_describe(item)}"), highlight=False), item)


def _describe(value: Any) -> str:
    kind = type(value).__name__
    if _is_hist(value):
        axes = ", ".join(_axis(axis) for axis in value.axes)
        storage = getattr(getattr(value, "storage_type", None), "__name__", "")
        return f"{kind}({axes}){f' storage={storage}' if storage else ''}"
    if isinstance(value, Mapping):
        return f"{kind} ({count(len(value), 'key')})"
    if isinstance(value, list | tuple | set | frozenset):
        return f"{kind} ({count(len(value), 'item')})"
    if isinstance(value, bool | int | float | complex | str | bytes) or value is None:
        return kind
    shape = getattr(value, "shape", None)
    if shape is not None and getattr(value, "dtype", None) is not None:
        return f"{kind} shape={tuple(shape)} dtype={value.dtype}"
    type_str = getattr(value, "type", None)  # awkward arrays
    if type_str is not None and kind == "Array":
        return f"awkward Array {type_str}"
    return kind


def _is_hist(value: Any) -> bool:
    return hasattr(value, "axes") and hasattr(value, "fill") and hasattr(value, "values")


def _axis(axis: Any) -> str:
    name = getattr(axis, "name", "") or "?"
    kind = type(axis).__name__
    if kind in ("StrCategory", "IntCategory"):
        cats = list(axis)
        shown = ", ".join(map(str, cats[:5])) + (", ..." if len(cats) > 5 else "")
        return f"{name}: {kind}[{shown}]"
    if kind in ("Regular", "Variable", "Integer"):
        return f"{name}: {kind}({count(len(axis), 'bin')}, {axis.edges[0]:g} to {axis.edges[-1]:g})"
    if kind == "Boolean":
        return f"{name}: Boolean"
    return f"{name}: {kind}({len(axis)})"
