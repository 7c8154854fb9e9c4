"""Property tests: a wrong argument to the pipeline API fails at the wrong call and loses nothing.

Each property feeds generated bad values to one call and checks three things:

* the call raises SAGE's own error (``ConfigError``/``PlanError``) whose message names the
  bad argument and says what to pass;
* it raises at the call that is wrong (never later, at ``submit`` or on the first record);
* nothing changed: the environment's graph is as it was, and finishing the pipeline
  correctly on the same environment (continuing the same stream where there is one) and
  submitting it gives the right output.

Examples are derandomised and bounded, so the file is deterministic and quick.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sage.common.core.functions.comap_function import CoMapFunction
from sage.common.core.functions.join_function import JoinFunction
from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.source_function import SourceFunction, StopSignal
from sage.common.errors import ConfigError, PlanError
from sage.kernel.api.connected_streams import ConnectedStreams
from sage.kernel.api.datastream import DataStream
from sage.kernel.api.local_environment import LocalEnvironment

BOUNDED = settings(max_examples=50, deadline=None, derandomize=True)
FEW = settings(max_examples=20, deadline=None, derandomize=True)

EXPECTED = [0, 4, 8]  # range(6) doubled, multiples of 4


def finish(env: LocalEnvironment, stream: DataStream | None = None) -> None:
    """Complete a correct pipeline (from ``stream``, a ``range(6)`` source, if given),
    submit it, and check its output: the environment is still fully usable."""
    out: list[int] = []
    source = env.from_collection(range(6)) if stream is None else stream
    source.map(lambda x: x * 2).filter(lambda x: x % 4 == 0).sink(out.append)
    env.submit()
    assert sorted(out) == EXPECTED


def refused(
    env: LocalEnvironment, call: Callable[[], Any], error: type[Exception], *names: str
) -> str:
    """Run ``call``, which must raise ``error`` naming every string in ``names`` and leave the
    environment's graph as it was; return the message."""
    before = env.graph.nodes()
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    assert env.graph.nodes() == before, "a refused call changed the pipeline"
    return message


# -- bad values -------------------------------------------------------------------------------

junk = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.builds(object),
)
not_positive_ints = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    junk,
)
not_finite_positive_seconds = st.one_of(
    st.floats(max_value=0.0),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.integers(max_value=0),
    st.booleans(),
    junk,
)
BAD_CONFIG: dict[str, st.SearchStrategy[Any]] = {
    "parallelism": not_positive_ints,
    "batch_size": not_positive_ints,
    "channel_capacity": not_positive_ints,
    "max_batch_delay_s": not_finite_positive_seconds,
    "metrics_sample_interval_s": not_finite_positive_seconds,
    "on_error": st.one_of(
        st.text(max_size=8).filter(lambda s: s not in ("fail", "skip", "dead_letter")),
        st.integers(),
        st.none(),
        st.lists(st.text(max_size=2), max_size=2),
    ),
    "chaining": st.one_of(st.integers(), st.floats(), st.text(max_size=3), st.none()),
    "dead_letter_path": st.one_of(
        st.just(""), st.integers(), st.floats(), st.booleans(), st.lists(st.text(), max_size=2)
    ),
    "cpu_affinity": st.one_of(
        st.text(max_size=3),  # "0" is not [0]
        st.integers(),
        st.just([]),
        st.lists(st.floats(), min_size=1, max_size=2),
        st.lists(st.booleans(), min_size=1, max_size=2),
        st.lists(st.integers(min_value=1 << 20), min_size=1, max_size=2),
        st.lists(st.integers(max_value=-1), min_size=1, max_size=2),
    ),
    "fault_tolerance": st.one_of(
        st.integers(), st.floats(), st.booleans(), st.text(max_size=8), st.lists(st.integers())
    ),
}
bad_config_entry = st.sampled_from(sorted(BAD_CONFIG)).flatmap(
    lambda key: st.tuples(st.just(key), BAD_CONFIG[key])
)
bad_parallelism = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=1),
)


# -- user functions of the wrong kind -----------------------------------------------------------


class Numbers(SourceFunction):
    """A source: ``execute()`` takes no record."""

    def execute(self) -> Any:
        return StopSignal


class Double(MapFunction):
    """A map: ``execute`` needs the record."""

    def execute(self, data: int) -> int:
        return data * 2


class Scale(MapFunction):
    """A map that needs a constructor argument."""

    def __init__(self, factor: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = factor

    def execute(self, data: int) -> int:
        return data * self.factor


class Pair(JoinFunction):
    def execute(self, payload: Any, key: Any, tag: int) -> list[Any]:
        return [(key, tag, payload)]


class Tag(CoMapFunction):
    def map0(self, data: Any) -> Any:
        return ("a", data)

    def map1(self, data: Any) -> Any:
        return ("b", data)


class NoExecute:
    """Not a function class, and its constructor needs an argument."""

    def __init__(self, needed: int) -> None:
        self.needed = needed


def no_args() -> int:
    return 1


def two_args(a: Any, b: Any) -> Any:
    return a


not_callable = st.one_of(
    st.integers(),
    st.floats(),
    st.none(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.builds(object),
)
# Functions the operators cannot call with one record, with what the error must say.
wrong_record_functions = st.sampled_from(
    [
        (Numbers, ("Numbers.execute()", "execute(self, data)")),  # a SourceFunction
        (Numbers(), ("Numbers.execute()", "execute(self, data)")),
        (Pair, ("Pair.execute()", "execute(self, data)")),  # a JoinFunction: three arguments
        (Scale, ("Scale(...) cannot be constructed", "'factor'", "(Scale, arg")),
        (no_args, ("no_args", "one argument, the record")),
        (two_args, ("two_args", "one argument, the record")),
        (lambda: 0, ("<lambda>", "one argument, the record")),
    ]
)
# Neither iterable nor callable: what no source can read.
not_data = st.one_of(st.integers(), st.floats(), st.none(), st.builds(object))
record_ops = st.sampled_from(["map", "filter", "flatmap", "sink", "keyby"])


# -- properties ---------------------------------------------------------------------------------


@BOUNDED
@given(entry=bad_config_entry, other=st.sampled_from([{}, {"parallelism": 2}]))
def test_a_bad_config_value_is_refused_naming_its_key(
    entry: tuple[str, Any], other: dict[str, Any]
) -> None:
    key, value = entry
    config = {**other, key: value}
    snapshot = list(config.items())
    with pytest.raises(ConfigError) as info:
        LocalEnvironment("bad_config", config=config)
    message = str(info.value)
    assert f"config[{key!r}]" in message and ("use" in message or "must be" in message)
    assert list(config.items()) == snapshot  # the caller's dict is untouched
    finish(LocalEnvironment("good_config", config=other))


@FEW
@given(
    config=st.one_of(
        st.lists(st.tuples(st.just("parallelism"), st.integers()), max_size=2),
        st.text(max_size=3),
        st.integers(),
        st.tuples(),
    )
)
def test_a_config_that_is_not_a_dict_is_refused(config: Any) -> None:
    with pytest.raises(ConfigError, match="config must be a dict"):
        LocalEnvironment("bad_config", config=config)


@FEW
@given(
    key=st.one_of(st.integers(), st.none(), st.tuples(st.text(max_size=2)), st.booleans()),
)
def test_a_config_key_that_is_not_a_string_is_refused(key: Any) -> None:
    with pytest.raises(ConfigError, match=r"config key .* is invalid; config keys are strings"):
        LocalEnvironment("bad_key", config={key: 1})


@FEW
@given(
    key=st.sampled_from(
        ["parallelism", "batch_size", "channel_capacity", "max_batch_delay_s", "on_error"]
    ),
    position=st.integers(min_value=0, max_value=20),
    letter=st.sampled_from("xqz"),
)
def test_a_misspelt_config_key_names_the_right_spelling(
    key: str, position: int, letter: str
) -> None:
    i = position % len(key)
    typo = key[:i] + letter + key[i + 1 :]
    with pytest.raises(ConfigError, match=rf"config key '{typo}' is unknown; did you mean"):
        LocalEnvironment("typo", config={typo: 1})


@FEW
@given(name=st.one_of(st.just(""), st.none(), st.integers(), st.lists(st.text(), max_size=1)))
def test_an_environment_name_must_be_a_non_empty_string(name: Any) -> None:
    with pytest.raises(PlanError, match="environment name must be a non-empty string"):
        LocalEnvironment(name)


@BOUNDED
@given(data=st.one_of(not_data, st.sampled_from([int, no_args, Numbers])))
def test_from_collection_refuses_what_is_not_iterable(data: Any) -> None:
    env = LocalEnvironment("not_iterable")
    stream = env.from_collection(range(6))
    refused(env, lambda: env.from_collection(data), PlanError, "from_collection", "iterable")
    finish(env, stream)


@BOUNDED
@given(
    verb=st.sampled_from(["from_source", "from_batch"]),
    function=st.one_of(
        not_data.map(lambda f: (f, "expected")),
        st.sampled_from(
            [
                (Double, "Double.execute()"),  # a MapFunction: its execute needs the record
                (NoExecute, "NoExecute"),  # a plain class called with no arguments
                (two_args, "two_args"),
                (lambda x: x, "<lambda>"),
            ]
        ),
    ),
)
def test_sources_refuse_functions_they_cannot_call(verb: str, function: tuple[Any, str]) -> None:
    fn, named = function
    env = LocalEnvironment("bad_source")
    stream = env.from_collection(range(6))
    refused(env, lambda: getattr(env, verb)(fn), PlanError, named)
    finish(env, stream)


@BOUNDED
@given(
    source=st.sampled_from(["from_collection", "from_source", "from_batch"]),
    parallelism=st.one_of(bad_parallelism, st.none()),
)
def test_sources_refuse_a_bad_parallelism(source: str, parallelism: Any) -> None:
    env = LocalEnvironment("bad_source_parallelism")
    refused(
        env,
        lambda: getattr(env, source)([1, 2], parallelism=parallelism),
        PlanError,
        f"parallelism={parallelism!r}",
        "integer >= 1",
    )
    finish(env)


@BOUNDED
@given(op=record_ops, function=not_callable)
def test_record_operators_refuse_what_is_not_a_function(op: str, function: Any) -> None:
    env = LocalEnvironment("not_callable")
    stream = env.from_collection(range(6))
    refused(env, lambda: getattr(stream, op)(function), PlanError, f"{op}: expected")
    finish(env, stream)


@BOUNDED
@given(op=record_ops, function=wrong_record_functions, on_error=st.sampled_from(["fail", "skip"]))
def test_record_operators_refuse_functions_that_cannot_take_a_record(
    op: str, function: tuple[Any, tuple[str, ...]], on_error: str
) -> None:
    # without the check, "skip" would run the job and silently drop every record
    fn, names = function
    env = LocalEnvironment("wrong_function", config={"on_error": on_error})
    stream = env.from_collection(range(6))
    refused(env, lambda: getattr(stream, op)(fn), PlanError, f"{op}: ", *names)
    finish(env, stream)


@BOUNDED
@given(
    op=st.sampled_from(["map", "filter", "flatmap", "sink", "keyby", "batch"]), p=bad_parallelism
)
def test_operators_refuse_a_bad_parallelism(op: str, p: Any) -> None:
    env = LocalEnvironment("bad_parallelism")
    stream = env.from_collection(range(6))
    call: Callable[[], Any] = (
        (lambda: stream.batch(2, parallelism=p))
        if op == "batch"
        else (lambda: getattr(stream, op)(lambda x: x, parallelism=p))
    )
    refused(env, call, PlanError, f"parallelism={p!r}", "integer >= 1")
    finish(env, stream)


@FEW
@given(op=record_ops, name=st.one_of(st.integers(min_value=1), st.lists(st.text(), min_size=1)))
def test_operators_refuse_a_name_that_is_not_a_string(op: str, name: Any) -> None:
    env = LocalEnvironment("bad_name")
    stream = env.from_collection(range(6))
    refused(env, lambda: getattr(stream, op)(str, name=name), PlanError, f"name={name!r}")
    finish(env, stream)


@BOUNDED
@given(
    size=st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.none(), st.text()),
)
def test_batch_refuses_a_bad_size(size: Any) -> None:
    env = LocalEnvironment("bad_batch_size")
    stream = env.from_collection(range(6))
    refused(env, lambda: stream.batch(size), PlanError, f"size={size!r}", "integer >= 1")
    finish(env, stream)


@BOUNDED
@given(
    timeout=st.one_of(
        st.floats(max_value=0.0),
        st.sampled_from([math.nan, math.inf]),  # NaN never expires; for no timeout, None
        st.integers(max_value=0),
        st.booleans(),
        st.text(max_size=3),
    )
)
def test_batch_refuses_a_bad_timeout(timeout: Any) -> None:
    env = LocalEnvironment("bad_batch_timeout")
    stream = env.from_collection(range(6))
    refused(env, lambda: stream.batch(2, timeout), PlanError, f"timeout_s={timeout!r}", "or None")
    finish(env, stream)


@BOUNDED
@given(other=not_callable)
def test_connect_refuses_what_is_not_a_stream(other: Any) -> None:
    env = LocalEnvironment("connect_junk")
    stream = env.from_collection(range(6))
    refused(env, lambda: stream.connect(other), PlanError, "connect: expected a DataStream")
    finish(env, stream)


def _keyed(env: LocalEnvironment) -> DataStream:
    return env.from_collection(range(6)).keyby(lambda x: x % 2)


def _pair(env: LocalEnvironment) -> ConnectedStreams:
    return env.from_collection([1]).connect(env.from_collection([2]))


def _keyed_pair(env: LocalEnvironment) -> ConnectedStreams:
    return _keyed(env).connect(_keyed(env))


# Misuses of connected streams: each builds the correct calls that come first and returns
# the wrong call (not yet made), with the words its error must contain.
Misuse = Callable[[LocalEnvironment], Callable[[], Any]]
CONNECT_MISUSE: list[tuple[Misuse, tuple[str, ...]]] = [
    (
        lambda env: partial(
            env.from_collection([1]).connect, LocalEnvironment("other").from_collection([2])
        ),
        ("connect: both streams must come from the same environment", "'other'"),
    ),
    (lambda env: partial(_pair(env).join, Pair), ("join: ", "is not keyed", ".keyby")),
    (
        lambda env: partial(_keyed(env).connect(env.from_collection([2])).join, Pair),
        ("join: ", "is not keyed"),
    ),
    (
        lambda env: partial(_keyed_pair(env).join, lambda x: [x]),
        ("join: ", "(payload, key, tag)"),
    ),
    (
        lambda env: partial(_keyed_pair(env).join, Scale, 2),
        ("join: Scale.execute()", "execute(self, payload, key, tag)"),
    ),
    (lambda env: partial(_pair(env).comap, [str]), ("comap: expected 2 callables",)),
    (lambda env: partial(_pair(env).comap, [str, no_args]), ("comap: function 1",)),
    (lambda env: partial(_pair(env).comap, Scale, 2), ("comap: ", "map0(), map1()")),
    (lambda env: partial(_pair(env).map, Numbers), ("map: Numbers.execute()",)),
    (
        lambda env: partial(env.from_collection([1]).broadcast().keyby, str),
        ("keyby: cannot follow .broadcast()",),
    ),
    (
        lambda env: partial(env.from_collection([1]).sink(lambda x: None).map, str),
        ("a sink ends its stream",),
    ),
]


@BOUNDED
@given(
    case=st.sampled_from(CONNECT_MISUSE),
    parallelism=st.integers(min_value=1, max_value=3),
)
def test_connect_and_join_misuse_is_refused_at_the_wrong_call(
    case: tuple[Misuse, tuple[str, ...]], parallelism: int
) -> None:
    build, names = case
    env = LocalEnvironment("connect_misuse", config={"parallelism": parallelism})
    out: list[Any] = []
    _keyed_pair(env).join(Pair).sink(out.append)  # a correct join, built first
    wrong = build(env)  # the correct calls before the wrong one stay in the pipeline
    refused(env, wrong, PlanError, *names)
    env.submit()
    # every record meets its key's instance, tagged by its input
    assert sorted(out) == sorted((x % 2, tag, x) for tag in (0, 1) for x in range(6))


@FEW
@given(autostop=st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats()))
def test_submit_refuses_an_autostop_that_is_not_a_bool(autostop: Any) -> None:
    env = LocalEnvironment("bad_autostop")
    out: list[int] = []
    env.from_collection(range(6)).map(lambda x: x * 2).filter(lambda x: x % 4 == 0).sink(out.append)
    with pytest.raises(ConfigError, match=re.escape(f"submit: autostop={autostop!r}")):
        env.submit(autostop)
    assert env.job is None and out == []  # nothing ran
    env.submit()
    assert sorted(out) == EXPECTED


@FEW
@given(
    method=st.sampled_from(["wait", "stop"]),
    timeout=st.one_of(
        st.floats(max_value=-1e-9),
        st.sampled_from([math.nan, math.inf]),
        st.integers(max_value=-1),
        st.booleans(),
        st.text(max_size=3),
    ),
)
def test_wait_and_stop_refuse_a_bad_timeout(method: str, timeout: Any) -> None:
    env = LocalEnvironment("bad_timeout")
    finish(env)
    with pytest.raises(ConfigError, match=rf"{method}: timeout=.* is invalid"):
        getattr(env, method)(timeout)
    assert env.wait(0) is True and env.metrics().status == "finished"


def _numbers() -> Iterator[int]:
    yield from range(6)


def test_submitting_again_a_pipeline_on_an_exhausted_generator_is_refused() -> None:
    env = LocalEnvironment("twice")
    out: list[int] = []
    env.from_collection(_numbers(), name="numbers").map(lambda x: x * 2).sink(out.append)
    env.submit()
    assert sorted(out) == [0, 2, 4, 6, 8, 10]
    first = env.job
    with pytest.raises(PlanError, match=r"source 'numbers' reads a generator that is already"):
        env.submit()
    assert env.job is first and sorted(out) == [0, 2, 4, 6, 8, 10]  # nothing ran or was lost


def test_a_wrong_function_fails_at_its_call_not_at_submit() -> None:
    """The call that is wrong raises; before the checks it was ``submit`` (or every record)."""
    env = LocalEnvironment("early")
    stream = env.from_collection(range(6))
    with pytest.raises(PlanError, match=r"map: Numbers\.execute\(\) cannot be called"):
        stream.map(Numbers)
    with pytest.raises(PlanError, match=r"Scale\(\.\.\.\) cannot be constructed .* 'factor'"):
        stream.map(Scale)
    out: list[int] = []
    stream.map(Scale, 2).filter(lambda x: x % 4 == 0).sink(out.append)
    stream.connect(env.from_collection([10])).comap(Tag).sink(out.append)
    env.submit()
    assert sorted(x for x in out if isinstance(x, int)) == EXPECTED
    assert sorted(x for x in out if isinstance(x, tuple)) == [("a", i) for i in range(6)] + [
        ("b", 10)
    ]
