"""Finding the analyst's processor and carrying it to workers.

A processor is named the way people run things from a shell, ``path/to/file.py:Name`` or
``package.module:Name``. It travels to workers as one cloudpickle payload, and each worker
process unpickles a given payload once and keeps it.

Workers share the driver's Python environment but not its working tree: a remote site, a
Globus endpoint, or a local worker started elsewhere cannot import the analyst's processor file
or the modules beside it. So every module the processor reaches that the environment does not
provide goes into the payload by value; installed packages (coffea, numpy, coffea-hpc itself,
editable installs included) go by name and are imported on the worker as usual.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import io
import json
import site
import sys
import sysconfig
import threading
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FunctionType, MethodType, ModuleType
from typing import Any
from urllib.parse import unquote, urlparse

import cloudpickle

from coffea_hpc.errors import ProcessorLoadError

__all__ = ["ProcessorHandle", "check_processor_spec", "load_processor", "run_processor"]

_LOADED: dict[str, Any] = {}
"""Per-process cache of unpickled processors by payload digest."""


def load_processor(spec: str) -> Any:
    """Resolve ``spec`` to a processor object.

    A class is instantiated with no arguments; an instance (of coffea's ``ProcessorABC`` or
    anything with ``process``) or a plain function ``f(events) -> result`` is used as is.
    """
    check_processor_spec(spec)
    module_part, _, attr = spec.rpartition(":")
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
        try:
            with _registered_by_value(_user_modules(processor)):
                payload = _dumps(processor)
        except Exception as err:
            raise ProcessorLoadError(
                f"the processor cannot be sent to workers: pickling failed with "
                f"{type(err).__name__}: {err}"
            ) from None
        return cls(payload, hashlib.sha256(payload).hexdigest()[:16])

    def load(self) -> Any:
        processor = _LOADED.get(self.digest)
        if processor is None:  # unpickled outside an except block: its errors come alone
            processor = cloudpickle.loads(self.payload)
            _LOADED.clear()  # one analysis per worker at a time; do not grow without bound
            _LOADED[self.digest] = processor
        return processor


def check_processor_spec(spec: str) -> None:
    """The mistakes in a processor's name found without importing anything (a name of the
    wrong shape, a file that is not there): what a run checks before it starts workers."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise ProcessorLoadError(
            f"processor {spec!r} must look like 'path/to/file.py:Name' or 'package.module:Name'"
        )
    if _looks_like_path(module_part) and not Path(module_part).expanduser().is_file():
        raise ProcessorLoadError(f"processor file {module_part!r} does not exist")


# -- import helpers -----------------------------------------------------------------------


def _looks_like_path(text: str) -> bool:
    return text.endswith(".py") or "/" in text or "\\" in text


def _import_file(path_text: str) -> ModuleType:
    path = Path(path_text).expanduser()
    name = f"{_FILE_MODULE_PREFIX}{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
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


# -- carrying the analyst's code -------------------------------------------------------

_FILE_MODULE_PREFIX = "coffea_hpc_user_"
"""Names of modules imported from a file path: no worker can import them by that name."""

_MAIN_NAMES = frozenset({"__main__", "__mp_main__"})
_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), range)
_REGISTRY_LOCK = threading.Lock()


def _user_modules(processor: Any) -> list[ModuleType]:
    """The analyst's modules that ``processor`` reaches, as cloudpickle should register them.

    Follows what pickling the processor would touch (its class and bases, instance
    attributes, functions' globals, closures and defaults, whole user modules), but never
    into installed code, so the walk stays small however big the environment is. A user
    package is returned as its top-level package, which covers all its submodules.
    """
    found: dict[str, ModuleType] = {}
    verdicts: dict[str, bool] = {}
    seen: dict[int, Any] = {}  # keeps what it saw alive, so ids stay unique

    def is_user(module: ModuleType) -> bool:
        name = module.__name__
        if name not in verdicts:
            verdicts[name] = name not in _MAIN_NAMES and (
                name.startswith(_FILE_MODULE_PREFIX) or not _installed(module))
        return verdicts[name]

    todo = [processor]
    while todo:
        obj = todo.pop()
        if isinstance(obj, _LEAVES) or id(obj) in seen:
            continue
        seen[id(obj)] = obj
        if isinstance(obj, ModuleType):
            if is_user(obj):
                found[obj.__name__] = obj
                todo.extend(vars(obj).values())
            continue
        name = (getattr(obj, "__module__", None) if isinstance(obj, type | FunctionType)
                else type(obj).__module__)
        home = sys.modules.get(name) if isinstance(name, str) else None
        if home is not None and is_user(home):
            todo.append(home)
        elif home is not None and home.__name__ not in _MAIN_NAMES and not _is_wrapper(obj):
            continue  # installed code: a worker imports it, nothing of the analyst's inside
        todo.extend(_references(obj))

    out: dict[str, ModuleType] = {}
    for module in found.values():
        top = sys.modules.get(module.__name__.partition(".")[0])
        target = top if top is not None and is_user(top) else module
        if sys.modules.get(target.__name__) is target:  # others go by value regardless
            out[target.__name__] = target
    return list(out.values())


def _is_wrapper(obj: Any) -> bool:
    return isinstance(obj, list | tuple | set | frozenset | dict | staticmethod | classmethod
                      | property | MethodType | functools.partial)


def _references(obj: Any) -> Iterable[Any]:
    """What pickling ``obj`` by value would also pickle, as far as it can hold user code."""
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, list | tuple | set | frozenset):
        return obj
    if isinstance(obj, staticmethod | classmethod):
        return [obj.__func__]
    if isinstance(obj, MethodType):
        return [obj.__func__, obj.__self__]
    if isinstance(obj, property):
        return [obj.fget, obj.fset, obj.fdel]
    if isinstance(obj, functools.partial):
        return [obj.func, *obj.args, *obj.keywords.values()]
    if isinstance(obj, type):
        return [*obj.__bases__, *vars(obj).values()]
    if isinstance(obj, FunctionType):
        names = _global_names(obj.__code__)
        cells = []
        for cell in obj.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell
                cells.append(cell.cell_contents)
        return [*(v for k, v in obj.__globals__.items() if k in names), *cells,
                *(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()]
    return [type(obj), *getattr(obj, "__dict__", {}).values()]


def _global_names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _global_names(const)
    return names


def _installed(module: ModuleType) -> bool:
    """Whether a worker in this environment can import ``module`` by its name, whatever its
    working directory and without the driver's ``PYTHONPATH``.

    True under the interpreter's and the environment's library folders, for top-level
    modules in folders that ``.pth`` files add to every interpreter (editable installs), and
    for modules of an installed distribution (also one on ``PYTHONPATH``, as in LCG views).
    """
    location = _location(module)
    if location is None:
        return True  # built into the interpreter
    if any(location.is_relative_to(root) for root in _library_roots()):
        return True
    top_name = module.__name__.partition(".")[0]
    top = sys.modules.get(top_name)
    top_location = _location(top) if top is not None else None
    if top_location is None or top_location.name.partition(".")[0] != top_name:
        return False
    container = top_location.parent
    if container in _pth_folders():
        return True
    return _distribution_in(container, top_name) or any(
        container.is_relative_to(root) and top_name in tops
        for root, tops in _editable_installs())


def _location(module: ModuleType) -> Path | None:
    """A module's file, or a package's folder."""
    paths = list(getattr(module, "__path__", None) or ())
    if paths:
        return Path(paths[0]).resolve()
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


@functools.cache
def _site_folders() -> tuple[Path, ...]:
    folders = [*getattr(site, "getsitepackages", list)(), site.getusersitepackages(),
               *(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))]
    return tuple(dict.fromkeys(Path(f).resolve() for f in folders if f))


@functools.cache
def _library_roots() -> tuple[Path, ...]:
    stdlib = (sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib"))
    return tuple(dict.fromkeys([*(Path(f).resolve() for f in stdlib), *_site_folders()]))


@functools.cache
def _pth_folders() -> frozenset[Path]:
    """Folders that ``site`` puts on every interpreter's path (hatchling's editable installs,
    among others)."""
    out = set()
    for folder in _site_folders():
        for pth in sorted(folder.glob("*.pth")) if folder.is_dir() else ():
            for line in pth.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith(("#", "import ", "import\t")):
                    path = (folder / line).resolve()
                    if path.is_dir():
                        out.add(path)
    return frozenset(out)


def _distribution_in(folder: Path, top_name: str) -> bool:
    """Whether a distribution installed into ``folder`` (a target on ``PYTHONPATH``, an LCG
    view) provides ``top_name``. Only that folder's metadata is read: reading every
    installed distribution's file list took seconds, paid by every run of an analyst's
    module, which is never installed."""
    if not any(folder.glob("*.dist-info")) and not any(folder.glob("*.egg-info")):
        return False
    return any(top_name in _top_levels(dist)
               for dist in importlib.metadata.distributions(path=[str(folder)]))


@functools.cache
def _editable_installs() -> tuple[tuple[Path, frozenset[str]], ...]:
    """(source tree, top-level names) of every editable install: one small file read per
    distribution, and file lists only for the editable ones."""
    out = []
    for dist in importlib.metadata.distributions():
        try:
            url = json.loads(dist.read_text("direct_url.json") or "{}")
        except ValueError:
            continue
        if not url.get("dir_info", {}).get("editable"):
            continue
        parsed = urlparse(url.get("url", ""))
        if parsed.scheme == "file":
            out.append((Path(unquote(parsed.path)).resolve(), frozenset(_top_levels(dist))))
    return tuple(out)


def _top_levels(dist: importlib.metadata.Distribution) -> set[str]:
    declared = dist.read_text("top_level.txt")
    if declared:
        return set(declared.split())
    names = set()
    for file in dist.files or ():
        first = file.parts[0] if file.parts else ""
        if len(file.parts) > 1 and not first.endswith((".dist-info", ".egg-info", ".data")):
            names.add(first)
        elif len(file.parts) == 1 and file.suffix in (".py", ".so", ".pyd"):
            names.add(file.name.partition(".")[0])
    return names


@contextlib.contextmanager
def _registered_by_value(modules: Iterable[ModuleType]) -> Iterator[None]:
    """Have cloudpickle carry ``modules`` by value for one dump.

    cloudpickle's registry is process-wide. Kept only for the dump, it changes nothing else
    in this process: outputs, checkpoints and other runs pickle as they did before.
    """
    with _REGISTRY_LOCK:
        added = [m for m in modules
                 if m.__name__ not in cloudpickle.list_registry_pickle_by_value()]
        for module in added:
            cloudpickle.register_pickle_by_value(module)
        try:
            yield
        finally:
            for module in added:
                cloudpickle.unregister_pickle_by_value(module)


def _by_value(name: str) -> bool:
    registry = cloudpickle.list_registry_pickle_by_value()
    parts = name.split(".")
    return name not in sys.modules or any(
        ".".join(parts[:i]) in registry for i in range(1, len(parts) + 1))


def _new_module(name: str) -> ModuleType:
    return ModuleType(name)


def _fill_module(module: ModuleType, state: dict[str, Any]) -> None:
    vars(module).update(state)
    vars(module)["__builtins__"] = builtins.__dict__


def _reduce_module(module: ModuleType) -> tuple[Any, ...]:
    """Like cloudpickle's, but a module's contents are pickled after the module itself, so
    modules that refer to each other (``pkg`` holding ``pkg.sub``, which imports ``pkg``)
    do not recurse forever."""
    if not _by_value(module.__name__):
        return importlib.import_module, (module.__name__,)
    state = {k: v for k, v in vars(module).items() if k != "__builtins__"}
    return _new_module, (module.__name__,), state, None, None, _fill_module


class _Pickler(cloudpickle.Pickler):
    dispatch_table = ChainMap({ModuleType: _reduce_module}, cloudpickle.Pickler.dispatch_table)


def _dumps(obj: Any) -> bytes:
    with io.BytesIO() as out:
        _Pickler(out).dump(obj)
        return out.getvalue()
