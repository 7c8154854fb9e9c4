"""Build the function object of one parallel instance from a :class:`FunctionSpec`.

A class is constructed once per instance. An instance is used as is by instance 0 and deep-
copied for the others, so parallel instances never share mutable state (as Flink serialises a
function per subtask). Plain callables are shared: they are expected to be stateless.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sage.common.core.context import RuntimeContext
from sage.common.core.state import KeyedState, KeyedStateBackend
from sage.common.errors import PlanError
from sage.kernel.checkpoint.state import NO_STATE, restore_function_state
from sage.kernel.graph.function_spec import FunctionForm, FunctionSpec
from sage.kernel.graph.logical import LogicalNode, OpKind

__all__ = ["FunctionInstance", "instantiate"]


@dataclass
class FunctionInstance:
    """The user function of one operator instance.

    Attributes:
        obj: The function object, or ``None`` for plain callables and data sources.
        call: What the runtime invokes per record (``obj.execute`` or the callable); for
            comap, one callable per input; for data sources, the data.
    """

    obj: Any
    call: Any

    def open(
        self, ctx: RuntimeContext, state: KeyedStateBackend | None, restored: Any = NO_STATE
    ) -> None:
        """Attach the context (and keyed state), give back the function's checkpointed
        state (``restored``) and call the function's ``open``."""
        obj = self.obj
        if obj is None:
            return
        obj.ctx = ctx
        if state is not None:
            obj._sage_state = KeyedState(state)
        restore_function_state(obj, restored)
        opener = getattr(obj, "open", None)
        if callable(opener):
            if _accepts_argument(opener):
                opener(ctx)
            else:
                opener()

    def close(self) -> None:
        """Call the function's ``close`` (if any)."""
        closer = getattr(self.obj, "close", None)
        if self.obj is not None and callable(closer):
            closer()


def _accepts_argument(method: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
    )


def _build_object(node: LogicalNode, spec: FunctionSpec, index: int) -> Any:
    if spec.form is FunctionForm.CLASS:
        try:
            return spec.target(*spec.args, **spec.kwargs)
        except Exception as exc:
            raise PlanError(
                f"{node.name}: constructing {spec.label}(...) for instance {index + 1}/"
                f"{node.parallelism} failed: {type(exc).__name__}: {exc}"
            ) from exc
    if index == 0:
        return spec.target
    try:
        return copy.deepcopy(spec.target)
    except Exception as exc:
        raise PlanError(
            f"{node.name}: parallelism={node.parallelism} needs one copy of the function object "
            f"per instance, but copying {spec.label} failed ({type(exc).__name__}: {exc}); pass "
            "the class and its arguments instead (e.g. .map(MyFunction, arg)) so each instance "
            "constructs its own"
        ) from exc


def instantiate(node: LogicalNode, index: int, *, n_inputs: int = 1) -> FunctionInstance:
    """Build instance ``index`` of ``node``'s function.

    Raises:
        PlanError: the constructor raised, or an object cannot be copied per instance.
    """
    spec = node.function
    match spec.form:
        case FunctionForm.ITERABLE:
            return FunctionInstance(obj=None, call=spec.target)
        case FunctionForm.CALLABLE:
            return FunctionInstance(obj=None, call=spec.target)
        case FunctionForm.CALLABLES:
            return FunctionInstance(obj=None, call=tuple(spec.target))
        case FunctionForm.CLASS | FunctionForm.INSTANCE:
            obj = _build_object(node, spec, index)
            if node.kind is OpKind.COMAP:
                methods = tuple(getattr(obj, f"map{i}") for i in range(n_inputs))
                return FunctionInstance(obj=obj, call=methods)
            return FunctionInstance(obj=obj, call=obj.execute)
    raise AssertionError(f"unknown function form {spec.form!r}")  # pragma: no cover
