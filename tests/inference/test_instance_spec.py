"""One definition of an instance's fields (``protocol.InstanceSpec``) checks the config
objects, the management API and ``ControlPlaneVLLMService``'s dict alike."""

from __future__ import annotations

from typing import Any

import pytest

from sage.common.errors import ConfigError
from sage.inference.config import BackendInstanceConfig


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"port": 0}, r"instance.port=0 is invalid .*; use an integer from 1 to 65535"),
        ({"port": "8001"}, r"instance.port='8001' is invalid"),
        ({"port": True}, r"instance.port=True is invalid"),
        ({"instance_type": "gpu"}, r"instance_type='gpu' is invalid .*use 'llm' or 'embedding'"),
        ({"max_concurrent_requests": 0}, r"use an integer from 1 to 1000000"),
        ({"host": "two words"}, r"instance.host='two words' is invalid"),
        ({"instance_id": ".."}, r"instance.instance_id='..' is invalid"),
        ({"api_key": "has space"}, r"instance.api_key='has space' is invalid"),
        ({"base_path": "v1"}, r"instance.base_path='v1' is invalid"),
    ],
)
def test_a_bad_field_is_refused_naming_it_and_the_fix(
    fields: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        BackendInstanceConfig(**fields)


def test_from_mapping_names_unknown_and_missing_keys() -> None:
    with pytest.raises(ConfigError, match=r"cfg: unknown key 'model' \(did you mean 'model_name'"):
        BackendInstanceConfig.from_mapping({"model": "m", "port": 1}, "cfg")
    with pytest.raises(ConfigError, match=r"cfg: 'port' is missing"):
        BackendInstanceConfig.from_mapping({"model_name": "m"}, "cfg", required=("port",))
    made = BackendInstanceConfig.from_mapping({"host": "localhost", "port": 9, "tls": True})
    assert (made.host, made.instance_id, made.tls) == ("127.0.0.1", "127.0.0.1:9", True)
