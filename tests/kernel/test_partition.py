"""The key hash is the same in every process, and equal keys hash alike."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import subprocess
import sys
from collections import namedtuple

import pytest

from sage.kernel.graph.partition import UnstableKeyError, stable_hash

KEYS = ["word", "", "ünïcødé", 0, 1, -7, 2**70, 3.5, None, b"raw", ("a", 1), (("n",), 2.25)]

_SCRIPT = """
import json, sys
from sage.kernel.graph.partition import stable_hash
keys = [tuple(k) if isinstance(k, list) else k for k in json.loads(sys.argv[1])]
print(json.dumps([stable_hash(k) for k in keys]))
"""


def _hashes_in_subprocess(seed: str) -> list[int]:
    keys = [k.decode() if isinstance(k, bytes) else k for k in KEYS if not isinstance(k, tuple)]
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(keys)],
        env={**os.environ, "PYTHONHASHSEED": seed},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_hash_is_identical_across_processes_with_different_hash_seeds() -> None:
    first, second = _hashes_in_subprocess("1"), _hashes_in_subprocess("4242")
    assert first == second
    keys = [k.decode() if isinstance(k, bytes) else k for k in KEYS if not isinstance(k, tuple)]
    assert first == [stable_hash(k) for k in keys]


def test_equal_keys_hash_alike() -> None:
    class Color(enum.StrEnum):
        RED = "red"

    Point = namedtuple("Point", "x y")
    assert stable_hash(1) == stable_hash(1.0) == stable_hash(True)
    assert stable_hash(Color.RED) == stable_hash("red")
    assert stable_hash(Point(1, 2)) == stable_hash((1, 2))
    assert stable_hash(frozenset({1, 2})) == stable_hash(frozenset({2, 1}))


def test_hash_spreads_keys_over_instances() -> None:
    buckets = [0] * 4
    for i in range(4000):
        buckets[stable_hash(f"user-{i}") % 4] += 1
    assert min(buckets) > 800


def test_dataclass_keys_hash_by_value_but_plain_objects_are_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class UserKey:
        user: str

    assert stable_hash(UserKey("a")) == stable_hash(UserKey("a"))
    with pytest.raises(UnstableKeyError, match="return a str, int or tuple"):
        stable_hash(object())
