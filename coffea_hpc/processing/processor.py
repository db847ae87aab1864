"""Finding the analyst's processor and carrying it to workers.

A processor is named the way people run things from a shell, ``path/to/file.py:Name`` or
``package.module:Name``. It travels to workers as one cloudpickle payload (code of the
analyst's own modules by value, so workers need not have their files), and each worker
process unpickles a given payload once and keeps it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

from coffea_hpc.errors import ProcessorLoadError

__all__ = ["ProcessorHandle", "load_processor", "run_processor"]

_LOADED: dict[str, Any] = {}
"""Per-process cache of unpickled processors by payload digest."""


def load_processor(spec: str) -> Any:
    """Resolve ``spec`` to a processor object.

    A class is instantiated with no arguments; an instance (of coffea's ``ProcessorABC`` or
    anything with ``process``) or a plain function ``f(events) -> result`` is used as is.
    """
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise ProcessorLoadError(
            f"processor {spec!r} must look like 'path/to/file.py:Name' or 'package.module:Name'"
        )
    module = _import_file(module_part) if _looks_like_path(module_part) else _import_module(
        module_part, spec
    )
    if not hasattr(module, attr):
        hint = ", ".join(_candidates(module)) or "none"
        raise ProcessorLoadError(
            f"{module_part!r} has no attribute {attr!r} (processors found there: {hint})"
        )
    target = getattr(module, attr)
    if inspect.isclass(target):
        try:
            target = target()
        except Exception as err:
            raise ProcessorLoadError(
                f"creating {attr}() from {module_part!r} failed: {type(err).__name__}: {err} "
                "(a processor class must be constructible with no arguments; otherwise expose "
                "an instance)"
            ) from None
    if not (hasattr(target, "process") or callable(target)):
        raise ProcessorLoadError(
            f"{spec!r} is a {type(target).__name__}, not a processor (expected a coffea "
            "ProcessorABC, an object with process(events), or a function f(events))"
        )
    return target


def run_processor(processor: Any, events: Any) -> Any:
    process = getattr(processor, "process", None)
    return process(events) if process is not None else processor(events)


def postprocess(processor: Any, accumulator: Any) -> Any:
    """coffea's Runner returns ``postprocess``'s value, or the accumulator if it gives None."""
    hook: Callable[[Any], Any] | None = getattr(processor, "postprocess", None)
    if hook is None:
        return accumulator
    out = hook(accumulator)
    return accumulator if out is None else out


@dataclass(frozen=True)
class ProcessorHandle:
    """A processor as bytes plus their digest; cheap to ship, unpickled once per process."""

    payload: bytes = field(repr=False)
    digest: str

    @classmethod
    def wrap(cls, processor: Any) -> ProcessorHandle:
        _pickle_user_code_by_value(processor)
        try:
            payload = cloudpickle.dumps(processor)
        except Exception as err:
            raise ProcessorLoadError(
                f"the processor cannot be sent to workers: pickling failed with "
                f"{type(err).__name__}: {err}"
            ) from None
        return cls(payload, hashlib.sha256(payload).hexdigest()[:16])

    def load(self) -> Any:
        try:
            return _LOADED[self.digest]
        except KeyError:
            processor = cloudpickle.loads(self.payload)
            _LOADED.clear()  # one analysis per worker at a time; do not grow without bound
            _LOADED[self.digest] = processor
            return processor


# -- import helpers -----------------------------------------------------------------------


def _looks_like_path(text: str) -> bool:
    return text.endswith(".py") or "/" in text or "\\" in text


def _import_file(path_text: str) -> ModuleType:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ProcessorLoadError(f"processor file {path_text!r} does not exist")
    name = f"coffea_hpc_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ProcessorLoadError(f"cannot import {path_text!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # let the file import its neighbours, as `python file.py` would
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ProcessorLoadError(
            f"importing {path_text!r} failed: {type(err).__name__}: {err}"
        ) from None
    finally:
        if added:
            sys.path.remove(folder)
    return module


def _import_module(name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):
            raise ProcessorLoadError(
                f"cannot import module {name!r} for processor {spec!r} (is it installed, or did "
                "you mean a file path like 'analysis.py:Name'?)"
            ) from None
        raise ProcessorLoadError(f"importing {name!r} failed: {err}") from None
    except Exception as err:
        raise ProcessorLoadError(
            f"importing {name!r} failed: {type(err).__name__}: {err}"
        ) from None


def _candidates(module: ModuleType) -> list[str]:
    out = []
    for key, value in vars(module).items():
        if key.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if hasattr(value, "process") or inspect.isfunction(value):
            out.append(key)
    return out


_INSTALLED = tuple(
    {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
)


def _pickle_user_code_by_value(processor: Any) -> None:
    """Make cloudpickle carry the analyst's own modules by value.

    Installed packages (coffea, hist, ...) are imported on the worker as usual; code that
    lives in the analyst's working tree may not be importable there.
    """
    owner = processor if inspect.isfunction(processor) else type(processor)
    module = sys.modules.get(getattr(owner, "__module__", "") or "")
    if module is None or module.__name__ in ("__main__", "builtins"):
        return
    path = getattr(module, "__file__", None) or ""
    if path and not path.startswith(_INSTALLED):
        cloudpickle.register_pickle_by_value(module)
