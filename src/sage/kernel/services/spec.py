"""``ServiceSpec``: a registered service, validated when it is registered."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sage.common.errors import ConfigError
from sage.kernel.graph.function_spec import describe_callable

__all__ = ["ServiceSpec"]


def _positive_int(service: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"service {service!r}: {key}={value!r} is invalid; use an integer >= 1")
    return value


@dataclass(frozen=True)
class ServiceSpec:
    """How to build a service and how its calls are served.

    Attributes:
        name: The name operators call it by.
        factory: Builds one instance (the class with its arguments, or the user's factory).
        label: Short description of the factory for messages.
        replicas: Instances that share the calls.
        concurrency: Calls each instance serves at once (``None``: the instance's
            ``max_concurrency``, else 1).
        fallback: Another registered service's name, or a spec built from a factory, that
            takes calls when this one raises, times out or is saturated.
        timeout_s: Seconds a call may take before it goes to the fallback (or fails).
        max_waiting: Callers that may wait for a free instance before new calls go to the
            fallback (saturation).
        num_cpus: CPUs each replica reserves on a Ray cluster (``None``: a small share, so
            services never starve tasks of scheduling slots). Ignored by the local runtime.
        num_gpus: GPUs each replica reserves on a Ray cluster: a replica with ``num_gpus=1``
            is placed only on a node that declares a GPU. Ignored by the local runtime.
    """

    name: str
    factory: Callable[[], Any]
    label: str
    replicas: int = 1
    concurrency: int | None = None
    fallback: str | ServiceSpec | None = None
    timeout_s: float | None = None
    max_waiting: int | None = None
    num_cpus: float | None = None
    num_gpus: float = 0.0

    @staticmethod
    def of(
        name: str,
        factory_or_class: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        replicas: int = 1,
        concurrency: int | None = None,
        fallback: Any = None,
        timeout: float | None = None,
        max_waiting: int | None = None,
        num_cpus: float | None = None,
        num_gpus: float = 0,
    ) -> ServiceSpec:
        """Validate a registration.

        Raises:
            ConfigError: the name, factory or an option is invalid (the message says which).
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"service name must be a non-empty string, got {name!r}")
        kwargs = dict(kwargs or {})
        if not callable(factory_or_class):
            raise ConfigError(
                f"service {name!r}: expected a class or a zero-argument factory "
                f"(e.g. lambda: MyService()), got {type(factory_or_class).__name__}"
            )
        if inspect.isclass(factory_or_class):
            cls = factory_or_class

            def build() -> Any:
                return cls(*args, **kwargs)

            label = cls.__qualname__
        else:
            if args or kwargs:
                raise ConfigError(
                    f"service {name!r}: arguments can only be passed with a class; a factory "
                    f"({describe_callable(factory_or_class)}) takes none — bind them inside it"
                )
            build, label = factory_or_class, describe_callable(factory_or_class)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ConfigError(
                f"service {name!r}: timeout={timeout!r} is invalid; use seconds > 0 or None"
            )
        if max_waiting is not None and (
            isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0
        ):
            raise ConfigError(
                f"service {name!r}: max_waiting={max_waiting!r} is invalid; use an integer >= 0"
            )
        for key, amount in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if amount is not None and (
                isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0
            ):
                raise ConfigError(
                    f"service {name!r}: {key}={amount!r} is invalid; use a number >= 0 "
                    "(fractions share a device, e.g. num_gpus=0.5)"
                )
        fallback_spec: str | ServiceSpec | None
        if fallback is None or isinstance(fallback, str):
            fallback_spec = fallback
        elif callable(fallback):
            fallback_spec = ServiceSpec.of(f"{name}.fallback", fallback)
        else:
            raise ConfigError(
                f"service {name!r}: fallback={fallback!r} is invalid; give the name of another "
                "registered service, or a class / zero-argument factory"
            )
        if fallback == name:
            raise ConfigError(f"service {name!r} cannot be its own fallback")
        return ServiceSpec(
            name=name,
            factory=build,
            label=label,
            replicas=_positive_int(name, "replicas", replicas),
            concurrency=None
            if concurrency is None
            else _positive_int(name, "concurrency", concurrency),
            fallback=fallback_spec,
            timeout_s=None if timeout is None else float(timeout),
            max_waiting=max_waiting,
            num_cpus=None if num_cpus is None else float(num_cpus),
            num_gpus=float(num_gpus),
        )
