"""How a user function was given, so each parallel instance can be built from it later.

Operators accept a function as a class (plus constructor arguments), an instance, or a plain
callable. :class:`FunctionSpec` records which, validates it up front (so a wrong argument fails
when the pipeline is built, naming the operator) and describes it for plans and errors.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sage.common.errors import PlanError

__all__ = ["FunctionForm", "FunctionSpec", "describe_callable"]


class FunctionForm(StrEnum):
    """The way a function was handed to an operator."""

    CLASS = "class"  # a class with ``execute``: one object constructed per parallel instance
    INSTANCE = "instance"  # an object with ``execute``: copied per extra parallel instance
    CALLABLE = "callable"  # a plain function, lambda, builtin or non-function class (``str``)
    ITERABLE = "iterable"  # a source given as data (list, range, generator, ...)
    CALLABLES = "callables"  # a sequence of callables, one per input (``comap([f0, f1])``)


def describe_callable(fn: Any) -> str:
    """``"<lambda> at pipeline.py:12"``, ``"Parse"``, ``"str"``: a short, locatable name."""
    if inspect.isclass(fn):
        return fn.__qualname__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    code = getattr(fn, "__code__", None)
    if code is not None:
        return f"{name} at {os.path.basename(code.co_filename)}:{code.co_firstlineno}"
    return str(name)


def _has_execute(obj: Any) -> bool:
    return callable(getattr(obj, "execute", None))


@dataclass(frozen=True)
class FunctionSpec:
    """A validated description of a user function for one operator.

    Attributes:
        form: How the function was given.
        target: The class, instance, callable, iterable or tuple of callables.
        args: Constructor positional arguments (``CLASS`` form only).
        kwargs: Constructor keyword arguments (``CLASS`` form only).
        label: Short display name (class name, ``"<lambda> at file.py:3"``).
    """

    form: FunctionForm
    target: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @staticmethod
    def of(
        op: str,
        fn: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        methods: tuple[str, ...] = ("execute",),
    ) -> FunctionSpec:
        """Validate ``fn`` for operator ``op`` and describe it.

        Args:
            op: Operator verb used in error messages (``"map"``, ``"sink"``...).
            fn: The function as the user passed it.
            args: Constructor arguments (only valid with a class).
            kwargs: Constructor keyword arguments (only valid with a class).
            methods: Methods an object must define (``("map0", "map1")`` for comap).

        Raises:
            PlanError: ``fn`` is not a usable function, or arguments were given with a
                non-class function.
        """
        kwargs = dict(kwargs or {})
        if inspect.isclass(fn) and all(callable(getattr(fn, m, None)) for m in methods):
            return FunctionSpec(FunctionForm.CLASS, fn, tuple(args), kwargs, fn.__qualname__)
        if args or kwargs:
            extra = ", ".join([*map(repr, args), *(f"{k}=..." for k in kwargs)])
            raise PlanError(
                f"{op}: constructor arguments ({extra}) can only be passed with a function "
                f"class, but got {describe_callable(fn)!r}; pass the class itself, e.g. "
                f"{op}(MyFunction, ...), or bind the arguments in your callable"
            )
        if (
            not inspect.isclass(fn)
            and all(callable(getattr(fn, m, None)) for m in methods)
            and (methods != ("execute",) or _has_execute(fn))
        ):
            return FunctionSpec(FunctionForm.INSTANCE, fn, label=type(fn).__qualname__)
        if methods == ("execute",) and callable(fn):
            return FunctionSpec(FunctionForm.CALLABLE, fn, label=describe_callable(fn))
        expected = (
            "a function class, a function object, or a callable"
            if methods == ("execute",)
            else f"a class or object defining {', '.join(m + '()' for m in methods)}"
        )
        raise PlanError(f"{op}: expected {expected}, got {type(fn).__name__} {fn!r:.80}")

    @staticmethod
    def of_callables(op: str, fns: Iterable[Callable[..., Any]], n_inputs: int) -> FunctionSpec:
        """Describe a sequence of plain callables, one per connected input."""
        fns = tuple(fns)
        if len(fns) != n_inputs or not all(callable(f) for f in fns):
            raise PlanError(
                f"{op}: expected {n_inputs} callables (one per connected stream), "
                f"got {len(fns)} item(s): {fns!r:.120}"
            )
        label = "[" + ", ".join(describe_callable(f) for f in fns) + "]"
        return FunctionSpec(FunctionForm.CALLABLES, fns, label=label)

    @staticmethod
    def of_iterable(data: Iterable[Any], label: str) -> FunctionSpec:
        """Describe a source given as data."""
        return FunctionSpec(FunctionForm.ITERABLE, data, label=label)
