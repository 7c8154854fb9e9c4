"""The pipeline API: seed import paths, function forms, lifecycle, and clear errors."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from sage.common.core.functions.map_function import MapFunction
from sage.common.errors import ConfigError, PlanError
from sage.kernel.api.local_environment import LocalEnvironment


def test_seed_and_older_import_paths() -> None:
    for path, name in [
        ("sage.kernel.api.local_environment", "LocalEnvironment"),
        ("sage.core.api.local_environment", "LocalEnvironment"),
        ("sage.core.api.function.base_function", "BaseFunction"),
        ("sage.common.core.functions.map_function", "MapFunction"),
        ("sage.common.core.functions.filter_function", "FilterFunction"),
        ("sage.common.core.functions.flatmap_function", "FlatMapFunction"),
        ("sage.common.core.functions.sink_function", "SinkFunction"),
        ("sage.common.core.functions.source_function", "SourceFunction"),
        ("sage.common.core.functions.source_function", "StopSignal"),
        ("sage.common.core.functions.batch_function", "BatchFunction"),
        ("sage.common.core.functions.keyby_function", "KeyByFunction"),
        ("sage.common.core.functions.base_function", "BaseFunction"),
        ("sage.common.core.functions.comap_function", "CoMapFunction"),
        ("sage.common.core.functions.join_function", "JoinFunction"),
    ]:
        assert hasattr(importlib.import_module(path), name), f"{path}.{name}"
    from sage.core.api.function.base_function import BaseFunction as Old
    from sage.core.api.local_environment import LocalEnvironment as OldEnv

    assert OldEnv is LocalEnvironment
    assert Old is importlib.import_module("sage.common.core.functions").BaseFunction


def test_a_local_pipeline_never_imports_ray() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sage.kernel.api.local_environment import LocalEnvironment\n"
        "env = LocalEnvironment('r'); out = []\n"
        "env.from_collection(range(5)).map(str, parallelism=2).sink(out.append); env.submit()\n"
        "assert len(out) == 5\n"
        "print('ray' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


class Scale(MapFunction):
    def __init__(self, factor: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = factor
        self.seen = 0

    def execute(self, data: int) -> int:
        self.seen += 1
        return data * self.factor


def test_functions_as_class_instance_and_callable() -> None:
    env = LocalEnvironment("forms")
    out: list[int] = []
    instance = Scale(10)
    (
        env.from_collection(range(4))
        .map(Scale, 2, parallelism=2)  # class + constructor args: one object per instance
        .map(instance)  # instance, parallelism 1: the object itself is used
        .map(lambda x: x + 1)  # plain callable
        .map(abs)  # builtin
        .sink(out.append)
    )
    env.submit()
    assert sorted(out) == [1, 21, 41, 61]
    assert instance.seen == 4  # readable after the run


def test_instances_are_copied_per_parallel_instance() -> None:
    env = LocalEnvironment("copies")
    shared = Scale(1)
    env.from_collection(range(100)).map(shared, parallelism=4).sink(print)
    env.submit()
    assert 0 < shared.seen < 100  # instance 0 kept the original; the others got copies


def test_map_returning_none_emits_nothing_and_print_writes_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = LocalEnvironment("print")
    env.from_collection([1, 2, 3]).map(lambda x: None if x == 2 else x).print("> ")
    env.submit()
    assert capsys.readouterr().out.splitlines() == ["> 1", "> 3"]


def test_from_batch_and_iterables() -> None:
    from sage.common.core.functions.batch_function import BatchFunction

    class Lines(BatchFunction):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.items = iter(["a", "b"])

        def execute(self) -> Any:
            return next(self.items, None)

    env = LocalEnvironment("batches")
    out: list[Any] = []
    env.from_batch(Lines).sink(out.append)
    env.from_batch(i for i in range(3)).sink(out.append)
    env.from_source(iter("xy")).sink(out.append)
    env.submit()
    assert sorted(map(str, out)) == ["0", "1", "2", "a", "b", "x", "y"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda env: env.from_collection([1]).map(str, parallelism=0), "parallelism=0 is invalid"),
        (lambda env: env.from_collection([1]).map(42), "expected a function class"),
        (
            lambda env: env.from_collection([1]).map(lambda x: x, 3),
            "constructor arguments .* only be passed with a function class",
        ),
        (
            lambda env: (
                env.from_collection(x for x in [1]).map(str).sink(print)
                and env.from_collection((x for x in [1]), parallelism=2)
            ),
            "one-shot iterator .* parallelism=2",
        ),
        (lambda env: env.from_collection(42), "expected an iterable"),
        (lambda env: env.from_collection([1]).batch(0), "size=0 is invalid"),
        (lambda env: env.from_collection([1]).batch(4, timeout_s=-1), "timeout_s=-1 is invalid"),
        (
            lambda env: env.from_collection([1]).connect(env.from_collection([2])).join(print),
            "is not keyed; call .keyby",
        ),
        (lambda env: env.from_collection([1]).sink(print).map(str), "a sink ends its stream"),
    ],
)
def test_wrong_arguments_name_themselves_and_the_fix(build: Any, message: str) -> None:
    env = LocalEnvironment("wrong")
    with pytest.raises(PlanError, match=message):
        build(env)


def test_state_outside_keyed_stream_explains_keyby() -> None:
    class Stateful(MapFunction):
        def execute(self, data: Any) -> Any:
            return self.state.get(0)

    env = LocalEnvironment("unkeyed_state")
    env.from_collection([1]).map(Stateful).sink(print)
    with pytest.raises(Exception, match=r"only for operators that follow .keyby"):
        env.submit()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"on_error": "ignore"}, "on_error.*'fail', 'skip', 'dead_letter'"),
        ({"batch_sise": 10}, "did you mean 'batch_size'"),
        ({"parallelism": -2}, "parallelism.*integer >= 1"),
        ({"chaining": "no"}, "must be True or False"),
        ([("on_error", "skip")], "config must be a dict"),
    ],
)
def test_bad_config_is_rejected_with_the_fix(config: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LocalEnvironment("bad", config=config)


def test_no_job_yet_is_explained() -> None:
    from sage.common.errors import JobError

    with pytest.raises(JobError, match=r"call env\.submit"):
        LocalEnvironment("idle").metrics()
