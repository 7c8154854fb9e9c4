"""Submissions travel with the code of the user's own modules, and only theirs."""

from __future__ import annotations

import importlib
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.jobmanager.pickling import (
    dumps_submission,
    is_local_module,
    loads_submission,
    local_modules_by_value,
)
from sage.kernel.jobmanager.protocol import Submission

USER_MODULE = """
OFFSET = 100

def shift(x):
    return helper(x) + OFFSET

def helper(x):
    return x * 2

class Scale:
    def __init__(self, factor):
        self.factor = factor

    def execute(self, x):
        return x * self.factor
"""


@pytest.fixture
def user_module(tmp_path: Path) -> Iterator[str]:
    """A module importable now (as the user's script sees it), gone afterwards."""
    name = "sage_test_user_pipeline_mod"
    (tmp_path / f"{name}.py").write_text(USER_MODULE, encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        yield name
    finally:
        sys.modules.pop(name, None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))


def forget(name: str, directory: Path) -> None:
    """Make ``name`` unimportable, as it is on a JobManager that never saw the file."""
    sys.modules.pop(name, None)
    sys.path.remove(str(directory))
    importlib.invalidate_caches()
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)


def submission_of(env: LocalEnvironment) -> Submission:
    return Submission(env.name, env.plan(), env.config, env.services)


def test_functions_of_a_module_the_receiver_cannot_import_travel_by_value(
    user_module: str, tmp_path: Path
) -> None:
    mod = importlib.import_module(user_module)
    env = LocalEnvironment("by_value")
    env.from_collection([1, 2]).map(mod.shift).map(mod.Scale, 3).sink(print)
    env.register_service("scaler", mod.Scale, 10)

    data = dumps_submission(submission_of(env))
    assert cloudpickle.list_registry_pickle_by_value() == set()  # left as it was
    forget(user_module, tmp_path)

    received = loads_submission(data)
    shift = received.plan.nodes[1].function.target
    scale_class = received.plan.nodes[2].function.target
    assert shift(1) == 102  # its global helper and constant came along
    assert scale_class(*received.plan.nodes[2].function.args).execute(5) == 15
    assert received.services[0].factory().execute(2) == 20


def test_plain_pickle_would_have_failed_there(user_module: str, tmp_path: Path) -> None:
    mod = importlib.import_module(user_module)
    data = cloudpickle.dumps(mod.shift)  # by reference: "module + name"
    forget(user_module, tmp_path)
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(data)


def test_another_cloudpickle_copies_local_modules_by_value_inside_the_context(
    user_module: str, tmp_path: Path
) -> None:
    import ray.cloudpickle  # Ray's own copy of cloudpickle, with a registry of its own

    mod = importlib.import_module(user_module)
    with local_modules_by_value(mod.shift, ray.cloudpickle) as registered:
        assert registered == [user_module]
        data = ray.cloudpickle.dumps(mod.shift)
    assert ray.cloudpickle.list_registry_pickle_by_value() == set()
    assert cloudpickle.list_registry_pickle_by_value() == set()
    forget(user_module, tmp_path)
    assert pickle.loads(data)(1) == 102


def test_only_local_modules_travel_by_value(user_module: str) -> None:
    importlib.import_module(user_module)
    assert is_local_module(user_module)
    assert not is_local_module("json")  # standard library
    assert not is_local_module("httpx")  # installed package
    assert not is_local_module("sage.kernel.api")  # SAGE itself
    assert not is_local_module("__main__")  # copied by value anyway
    assert not is_local_module("sys")  # built in: no file


def test_loading_something_else_than_a_submission_is_refused() -> None:
    with pytest.raises(TypeError, match="Submission"):
        loads_submission(cloudpickle.dumps({"not": "a submission"}))
