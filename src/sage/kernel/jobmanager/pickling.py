"""Pickling a :class:`~sage.kernel.jobmanager.protocol.Submission` so the JobManager (and its
Ray workers) can rebuild the user's functions.

Plain pickle stores a function as "module + name" and the receiver imports it. That fails
for the functions users write most: in their own script directory, a test module, or a
package that is on their ``sys.path`` but not installed where the JobManager runs. So
:func:`dumps_submission` first walks the submission to find the modules its functions and
classes come from, and has ``cloudpickle`` copy *by value* (code, not a reference) those
that are local: not part of SAGE, not in the standard library and not installed in
site-packages. Installed packages (numpy, the user's pip-installed libraries) and SAGE itself
still travel by reference: the receiver has them. Functions of ``__main__`` and closures are
copied by value by cloudpickle anyway.
"""

from __future__ import annotations

import io
import logging
import sys
import sysconfig
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from sage.kernel.jobmanager.protocol import Submission

__all__ = ["dumps_submission", "is_local_module", "loads_submission", "local_modules_by_value"]

logger = logging.getLogger(__name__)

# Registering modules by value is global to cloudpickle: one dump at a time changes it.
_REGISTRY_LOCK = threading.Lock()


class _Discard(io.RawIOBase):
    """A file that drops what is written (the discovery pass keeps only what it saw)."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


class _ModuleRecorder(cloudpickle.CloudPickler):  # type: ignore[misc]
    """Pickles as usual, noting the ``__module__`` of every function and class it meets."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.modules: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType | type):
            module = getattr(obj, "__module__", None)
            if isinstance(module, str):
                self.modules.add(module)
        return super().reducer_override(obj)


def _installed_roots() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return tuple(Path(root).resolve() for root in roots)


def is_local_module(name: str) -> bool:
    """Whether functions of module ``name`` must travel by value: it is loaded from a file
    that is not SAGE's, the standard library's, or an installed package's."""
    if name.partition(".")[0] == "sage" or name == "__main__":
        return False  # the receiver has SAGE; __main__ is copied by value already
    module = sys.modules.get(name)
    if not isinstance(module, types.ModuleType):
        return False
    file = getattr(module, "__file__", None)
    if not file:
        return False  # built-in, frozen or namespace: nothing to copy
    path = Path(file).resolve()
    return not any(path.is_relative_to(root) for root in _installed_roots())


def _modules_met(obj: Any) -> set[str]:
    recorder = _ModuleRecorder(_Discard())
    recorder.dump(obj)
    return recorder.modules


@contextmanager
def local_modules_by_value(
    obj: Any, pickler: types.ModuleType | None = None
) -> Iterator[list[str]]:
    """While inside, ``pickler`` copies by value the local modules (see
    :func:`is_local_module`) whose functions and classes ``obj`` uses.

    Discovery repeats until no new local module turns up: a function copied by value
    brings its globals along, which may come from another local module. On exit the
    registrations made here are undone (one ``with`` at a time holds them).

    Example:
        >>> import ray.cloudpickle  # doctest: +SKIP
        >>> with local_modules_by_value(plan, ray.cloudpickle):  # doctest: +SKIP
        ...     actor = TaskActor.remote(plan, ...)  # Ray pickles the plan here

    Args:
        obj: What will be pickled.
        pickler: The ``cloudpickle`` module to register with (default: cloudpickle; Ray's
            vendored ``ray.cloudpickle`` keeps a registry of its own).

    Yields:
        The names of the modules registered.
    """
    targets = [cloudpickle] if pickler in (None, cloudpickle) else [cloudpickle, pickler]
    with _REGISTRY_LOCK:
        registered = set(cloudpickle.list_registry_pickle_by_value())
        added: list[types.ModuleType] = []
        try:
            while True:
                new = sorted(
                    name
                    for name in _modules_met(obj)
                    if name not in registered and is_local_module(name)
                )
                if not new:
                    break
                for name in new:
                    module = sys.modules[name]
                    for target in targets:
                        if name not in target.list_registry_pickle_by_value():
                            target.register_pickle_by_value(module)
                    registered.add(name)
                    added.append(module)
            if added:
                logger.debug(
                    "pickling by value the functions of: %s", ", ".join(m.__name__ for m in added)
                )
            yield [m.__name__ for m in added]
        finally:
            for module in added:
                for target in targets:
                    if module.__name__ in target.list_registry_pickle_by_value():
                        target.unregister_pickle_by_value(module)


def dumps_submission(submission: Submission) -> bytes:
    """Pickle ``submission``, copying the code of local modules' functions and classes
    (see :func:`local_modules_by_value`).

    Raises:
        pickle.PicklingError: something in the pipeline cannot be pickled (an open file, a
            lock, a live connection...); create it in the function's ``open()`` instead.
    """
    with local_modules_by_value(submission):
        return bytes(cloudpickle.dumps(submission))


def loads_submission(data: bytes) -> Submission:
    """Unpickle a submission. Only the JobManager calls this, after checking the token:
    unpickling runs code chosen by whoever produced ``data``.

    Raises:
        TypeError: ``data`` holds something other than a :class:`Submission`.
        Exception: whatever unpickling raises (a module the receiver cannot import, ...).
    """
    submission = cloudpickle.loads(data)
    if not isinstance(submission, Submission):
        raise TypeError(f"expected a pickled Submission, got {type(submission).__name__}")
    return submission
