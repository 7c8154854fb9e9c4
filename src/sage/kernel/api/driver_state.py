"""Finding functions that write to objects of the submitting process, before a job leaves it.

On a ``RemoteEnvironment`` a pipeline's functions are pickled and run on the cluster:
``.sink(out.append)`` appends to a *copy* of ``out`` inside a worker, and the list in the
submitting process stays empty, without an error anywhere. :func:`check_driver_state`
looks, at ``submit()``, for functions that mutate a list, dict, set, deque or bytearray of
this process:

* a bound method that mutates one (``out.append``, ``counts.__setitem__``, ``seen.add``)
  is refused with a :class:`~sage.common.errors.PlanError`, whatever the operator: its
  effect cannot reach this process;
* a Python function or lambda whose code calls such a method on a container it reaches
  through a global or a closure (``lambda x: out.append(x)``) is refused as a sink, and
  warned about (:class:`~sage.common.errors.SageWarning`) elsewhere, where it may be a
  cache the worker keeps for itself.

Both messages name the operator and point to ``collect()`` or a file sink. Function
classes are not inspected: their attributes are per-instance state by design.
"""

from __future__ import annotations

import collections
import dis
import types
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sage.common.errors import PlanError, SageWarning
from sage.kernel.graph.function_spec import FunctionForm, FunctionSpec
from sage.kernel.graph.logical import LogicalNode, OpKind

__all__ = ["Mutation", "check_driver_state", "mutated_container"]

_CONTAINERS = (list, dict, set, bytearray, collections.deque)
_MUTATORS = frozenset(
    {
        "append",
        "appendleft",
        "extend",
        "extendleft",
        "insert",
        "add",
        "update",
        "setdefault",
        "__setitem__",
        "__delitem__",
        "__iadd__",
        "__ior__",
        "pop",
        "popitem",
        "popleft",
        "remove",
        "discard",
        "clear",
        "sort",
        "reverse",
    }
)
_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_DEREF", "LOAD_NAME", "LOAD_CLASSDEREF"})
_ATTRS = frozenset({"LOAD_METHOD", "LOAD_ATTR"})
_SUBSCRIPT_STORES = frozenset({"STORE_SUBSCR", "DELETE_SUBSCR"})


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and the code nested in it (comprehensions, inner functions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _captured(fn: types.FunctionType, name: str) -> Any:
    """The value ``fn`` reaches as ``name`` through its closure or its globals."""
    code = fn.__code__
    if fn.__closure__ and name in code.co_freevars:
        try:
            return fn.__closure__[code.co_freevars.index(name)].cell_contents
        except ValueError:  # an empty cell
            return None
    return fn.__globals__.get(name)


def _stack_effect(ins: dis.Instruction) -> int:
    arg = ins.arg if ins.opcode >= dis.HAVE_ARGUMENT else None
    return dis.stack_effect(ins.opcode, arg, jump=False)


def _container_loaded_at(instructions: list[dis.Instruction], store: int) -> int | None:
    """The index of the instruction that pushed the container a ``STORE_SUBSCR`` (at index
    ``store``) writes into: the second item from the top, found by walking back."""
    depth = 0
    for j in range(store - 1, -1, -1):
        try:
            depth += _stack_effect(instructions[j])
        except ValueError:  # an opcode this Python cannot size: give up on this store
            return None
        if depth >= 2:
            return j
    return None


@dataclass(frozen=True)
class Mutation:
    """A container of this process that a function writes to.

    Attributes:
        kind: The container's type (``"list"``).
        method: What the function does to it (``"append"``, ``"__setitem__"``).
        variable: The global or closure variable it is reached by (``None``: the function
            is a bound method of the container itself).
    """

    kind: str
    method: str
    variable: str | None = None

    def describe(self) -> str:
        """``"the list 'out' of this process (out.append)"``."""
        if self.variable is None:
            return f"a {self.kind} of this process ({self.kind}.{self.method})"
        return f"the {self.kind} {self.variable!r} of this process ({self.variable}.{self.method})"


def mutated_container(fn: Any) -> Mutation | None:
    """The container of this process that ``fn`` writes to, if any.

    Bound methods (``out.append``) are recognised directly; Python functions by their
    bytecode: a global or closure variable holding a container, then a mutating method
    called on it, or an item assigned in it (``counts[k] = v``).
    """
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", "")
    if isinstance(owner, _CONTAINERS) and name in _MUTATORS:
        return Mutation(type(owner).__name__, name)
    if not isinstance(fn, types.FunctionType):
        return None
    for code in _codes(fn.__code__):
        instructions = list(dis.get_instructions(code))
        for i, ins in enumerate(instructions):
            variable, method = None, ""
            if ins.opname in _LOADS and i + 1 < len(instructions):
                nxt = instructions[i + 1]
                if nxt.opname in _ATTRS and nxt.argval in _MUTATORS:
                    variable, method = str(ins.argval), str(nxt.argval)
            elif ins.opname in _SUBSCRIPT_STORES:
                j = _container_loaded_at(instructions, i)
                if j is not None and instructions[j].opname in _LOADS:
                    variable = str(instructions[j].argval)
                    method = "__setitem__" if ins.opname == "STORE_SUBSCR" else "__delitem__"
            if variable is not None:
                value = _captured(fn, variable)
                if isinstance(value, _CONTAINERS):
                    return Mutation(type(value).__name__, method, variable)
    return None


def _callables(spec: FunctionSpec) -> tuple[Any, ...]:
    if spec.form is FunctionForm.CALLABLE:
        return (spec.target,)
    if spec.form is FunctionForm.CALLABLES:
        return tuple(spec.target)
    return ()


def check_driver_state(nodes: Iterable[LogicalNode]) -> None:
    """Refuse (or warn about) functions that write to containers of this process.

    Raises:
        PlanError: a function is a bound mutating method of a container, or a sink
            function mutates a container it captured (see the module docstring).
    """
    for node in nodes:
        for fn in _callables(node.function):
            found = mutated_container(fn)
            if found is None:
                continue
            message = (
                f"{node.name} writes to {found.describe()}, but on a RemoteEnvironment the "
                f"job runs on the cluster, where its functions work on copies: the "
                f"{found.kind} here would stay as it is. Use .collect() to get the records "
                "back (result = stream.collect(); env.submit(); list(result)), or write them "
                "to a file sink"
            )
            if found.variable is None or node.kind is OpKind.SINK:
                raise PlanError(message)
            warnings.warn(
                message + "; if it is a cache of the worker's own, keep it in a function "
                "class (self.cache) instead",
                SageWarning,
                stacklevel=5,
            )
