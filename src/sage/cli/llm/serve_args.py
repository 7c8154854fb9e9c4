"""What ``sage llm serve`` was asked for: :class:`ServeArgs`, checked by :func:`check_args`.

The arguments are kept in the state file as ``state["args"]`` (:meth:`ServeArgs.to_state`),
so ``sage llm restart`` starts the same stack again and ``sage llm engine start`` starts
more instances like the first. The API key is not one of them: it is never written there.

Example::

    args = check_args(ServeArgs(model="smollm2", engine=Engine.CPU, ...))
    state["args"] = args.to_state()
    again = ServeArgs.from_state(state["args"])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any

from sage.common.errors import ConfigError

__all__ = [
    "CPU_DTYPES",
    "CPU_ENGINES",
    "STAND_INS",
    "Dtype",
    "Engine",
    "ServeArgs",
    "check_args",
    "embedding_engine",
]


class Engine(StrEnum):
    """What serves the chat model."""

    CPU = "cpu"
    LLAMA_CPP = "llama.cpp"
    TRANSFORMERS = "transformers"
    VLLM = "vllm"
    STUB = "stub"
    SIMULATED = "simulated"


class Dtype(StrEnum):
    """Weights' precision (the transformers engine takes float32 or bfloat16; a GGUF model's
    is its quantisation)."""

    AUTO = "auto"
    HALF = "half"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"


CPU_DTYPES = (Dtype.FLOAT32, Dtype.BFLOAT16)
CPU_ENGINES = (Engine.CPU, Engine.LLAMA_CPP, Engine.TRANSFORMERS)
STAND_INS = (Engine.STUB, Engine.SIMULATED)  # serve any model name; nothing is loaded


def embedding_engine(engine: Engine) -> Engine:
    """The engine that serves the embedding model of a stack whose chat model ``engine``
    serves: a stand-in serves its own, any other engine leaves it to ``cpu``
    (sentence-transformers)."""
    return engine if engine in STAND_INS else Engine.CPU


@dataclass(frozen=True)
class ServeArgs:
    """Every ``sage llm serve`` parameter as the user gave it, after defaults (the API key
    aside). Field names are the keys of ``state["args"]``; other commands read them, so a
    name is never changed.

    Attributes:
        model: Chat model (``-m/--model``).
        engine: What serves it (``--engine``).
        embedding: Whether the embedding model is served too (``--no-embedding``: not).
        embedding_model: The embedding model (``-e/--embedding-model``).
        llm_port: LLM engine port (``-p/--llm-port``), resolved from its default.
        embedding_port: Embedding engine port.
        gateway_port: Gateway port (``-g/--gateway-port``).
        host: Address the processes listen on.
        policy: Gateway scheduling policy, by its canonical name.
        routing: Gateway routing policy, by its canonical name.
        tenants: Absolute path of the tenants' JSON file, or ``None``.
        max_batch: CPU engines: sequences decoded together.
        dtype: vLLM ``--dtype``, or the transformers engine's precision.
        gpu_memory: vLLM ``--gpu-memory-utilization``.
        tensor_parallel: GPUs vLLM splits the model over (``-tp``).
        max_model_len: Most tokens of one request, prompt and answer (``None``: the
            model's own, or llama.cpp's share of its KV cache).
        sim_profile: Simulated engine: the JSON of its profile, as given.
        foreground: Whether ``serve`` stayed in the foreground.
        timeout: Seconds each process may take to start.
    """

    model: str
    engine: Engine
    embedding: bool
    embedding_model: str
    llm_port: int
    embedding_port: int
    gateway_port: int
    host: str
    policy: str
    routing: str
    tenants: str | None
    max_batch: int
    dtype: Dtype | None
    gpu_memory: float | None
    tensor_parallel: int
    max_model_len: int | None
    sim_profile: str | None
    foreground: bool
    timeout: float

    def to_state(self) -> dict[str, Any]:
        """JSON-ready form for ``state["args"]`` (the enums as their strings)."""
        raw = asdict(self)
        raw["engine"] = str(self.engine)
        raw["dtype"] = None if self.dtype is None else str(self.dtype)
        return raw

    @classmethod
    def from_state(cls, raw: Mapping[str, Any]) -> ServeArgs:
        """The arguments a state file recorded (keys it does not know are ignored).

        Raises:
            ConfigError: a key is missing or a value is not one ``serve`` takes.
        """
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in raw]
        if missing:
            raise ConfigError(f"the recorded arguments lack {', '.join(missing)}")
        values = {name: raw[name] for name in names}
        try:
            values["engine"] = Engine(values["engine"])
            values["dtype"] = None if values["dtype"] is None else Dtype(values["dtype"])
        except ValueError as exc:
            raise ConfigError(f"the recorded arguments hold {exc}") from None
        return cls(**values)


def check_args(args: ServeArgs) -> ServeArgs:
    """Refuse arguments ``serve`` cannot honour, before anything starts (no I/O here).

    Returns:
        ``args`` with the policies under their canonical names.

    Raises:
        ConfigError: naming the option and the fix (``serve`` exits 2 with it).
    """
    from sage.inference.config import RoutingPolicyType, SchedulingPolicyType

    try:
        policy = str(SchedulingPolicyType.parse(args.policy))
    except ConfigError as exc:
        raise ConfigError(f"--policy: {exc}") from None
    try:
        routing = str(RoutingPolicyType.parse(args.routing))
    except ConfigError as exc:
        raise ConfigError(f"--routing: {exc}") from None
    if args.tensor_parallel < 1:
        raise ConfigError(
            f"-tp/--tensor-parallel {args.tensor_parallel} is invalid: give the number of GPUs "
            "to split the model over, an integer >= 1"
        )
    if args.tensor_parallel > 1 and args.engine is not Engine.VLLM:
        raise ConfigError(
            f"-tp/--tensor-parallel {args.tensor_parallel}: tensor parallelism needs "
            f"--engine vllm (it splits a model over GPUs; --engine {args.engine} runs one "
            "process); drop -tp or use --engine vllm"
        )
    if args.max_model_len is not None and args.max_model_len < 1:
        raise ConfigError(
            f"--max-model-len {args.max_model_len} is invalid: give the most tokens of one "
            "request (prompt and answer), an integer >= 1, or leave it out"
        )
    if args.max_batch < 1:
        raise ConfigError(
            f"--max-batch {args.max_batch} is invalid: give the sequences decoded together, "
            "an integer >= 1"
        )
    if args.sim_profile is not None:
        if args.engine is not Engine.SIMULATED:
            raise ConfigError("--sim-profile is for --engine simulated")
        from sage.inference.engines.simulated import SimulatorProfile

        try:
            SimulatorProfile.from_json(args.sim_profile)
        except ConfigError as exc:
            raise ConfigError(f"--sim-profile: {exc}") from None
    return replace(args, policy=policy, routing=routing)
