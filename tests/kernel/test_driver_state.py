"""Functions that write to containers of the submitting process are found before a job
leaves it (they would write to copies on the cluster)."""

from __future__ import annotations

import collections
import warnings
from typing import Any

import pytest

from sage.common.errors import PlanError, SageWarning
from sage.kernel.api.driver_state import Mutation, check_driver_state, mutated_container
from sage.kernel.api.local_environment import LocalEnvironment

OUT: list[Any] = []
COUNTS: dict[Any, Any] = {}
SEEN: set[Any] = set()
TABLE = {"a": 1}


def appends(x: Any) -> None:
    OUT.append(x)


def stores(x: Any) -> None:
    COUNTS[str(x) + "!"] = len(OUT)


def reads(x: Any) -> Any:
    return TABLE.get(x, 0) + len(OUT)


def closure() -> Any:
    kept: collections.deque[Any] = collections.deque()
    return lambda x: kept.appendleft(x)


@pytest.mark.parametrize(
    ("fn", "found"),
    [
        (OUT.append, Mutation("list", "append")),
        (COUNTS.__setitem__, Mutation("dict", "__setitem__")),
        (SEEN.add, Mutation("set", "add")),
        (lambda wn: COUNTS.__setitem__(*wn), Mutation("dict", "__setitem__", "COUNTS")),
        (appends, Mutation("list", "append", "OUT")),
        (stores, Mutation("dict", "__setitem__", "COUNTS")),
        (lambda x: [SEEN.add(y) for y in x], Mutation("set", "add", "SEEN")),
        (closure(), Mutation("deque", "appendleft", "kept")),
        (reads, None),
        (lambda x: x * 2, None),
        (str.split, None),
        (print, None),
        (OUT.count, None),
    ],
)
def test_writes_to_containers_of_this_process_are_found(fn: Any, found: Mutation | None) -> None:
    assert mutated_container(fn) == found


def test_a_bound_mutator_is_refused_wherever_it_is() -> None:
    env = LocalEnvironment("x")
    env.from_collection([1]).map(SEEN.add, name="remember").sink(print)
    with pytest.raises(PlanError) as err:
        check_driver_state(env.graph.nodes())
    message = str(err.value)
    assert message.startswith("map 'remember' writes to a set of this process (set.add)")
    assert ".collect()" in message and "file sink" in message


def test_a_sink_function_writing_to_a_captured_container_is_refused() -> None:
    env = LocalEnvironment("x")
    env.from_collection([1]).sink(lambda wn: COUNTS.__setitem__(*wn))
    with pytest.raises(PlanError, match=r"the dict 'COUNTS' of this process \(COUNTS.__setitem__"):
        check_driver_state(env.graph.nodes())


def test_another_function_doing_so_is_warned_about() -> None:
    env = LocalEnvironment("x")
    env.from_collection([1]).map(stores, name="memo").sink(print)
    with pytest.warns(SageWarning, match=r"map 'memo' writes to the dict 'COUNTS'.*self.cache"):
        check_driver_state(env.graph.nodes())


def test_pipelines_that_only_read_pass_quietly() -> None:
    env = LocalEnvironment("x")
    env.from_collection([1]).map(reads).filter(lambda x: x in TABLE).print()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_driver_state(env.graph.nodes())
