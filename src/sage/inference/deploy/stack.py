"""``LocalStack``: engine servers and a gateway inside this process.

What ``sage llm serve`` runs as separate processes, on one background event-loop thread
instead: for programs, examples, tests and benchmarks that need real OpenAI-compatible
servers on loopback without managing processes.

Example:
    >>> with LocalStack(engine="stub") as stack:        # doctest: +SKIP
    ...     client = UnifiedInferenceClient.create(control_plane_url=stack.gateway_url)
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from sage.common.concurrency import LoopThread
from sage.common.errors import ConfigError
from sage.inference.config import BackendInstanceConfig, UnifiedServerConfig
from sage.inference.engines.server import EngineServer
from sage.inference.gateway.server import UnifiedAPIServer

__all__ = ["LocalStack"]

T = TypeVar("T")


class LocalStack:
    """LLM engine servers, an embedding engine server and a gateway in front of them.

    Args:
        llm: Chat model (bundled name, path or cached hub name); ``None`` for none.
        embedding: Embedding model; ``None`` for none.
        engine: ``cpu`` (the real models), ``stub`` (answers at once) or ``simulated`` (the
            timing of a batched GPU engine; ``profile=`` sets it).
        host: Address every server listens on.
        llm_ports: One port per LLM engine server (0 = any free port). Two or more ports
            start that many engines for the model, each its own instance behind the gateway.
        embedding_port: Port of the embedding engine server (0 = any).
        gateway_port: Port of the gateway (0 = any); ``None`` starts no gateway.
        max_concurrent_requests: Per instance, as the gateway enforces it.
        gateway_options: More :class:`UnifiedServerConfig` fields (``api_key``,
            ``max_body_bytes``, ``health_check_interval_s``, ``scheduling_policy``...).
        **engine_options: For the engines (e.g. ``max_batch``, ``dtype``, ``profile``).
    """

    def __init__(
        self,
        llm: str | None = "smollm2",
        embedding: str | None = "all-minilm-l6-v2",
        *,
        engine: str = "cpu",
        host: str = "127.0.0.1",
        llm_ports: Sequence[int] = (0,),
        embedding_port: int = 0,
        gateway_port: int | None = 0,
        max_concurrent_requests: int = 64,
        gateway_options: Mapping[str, Any] | None = None,
        **engine_options: Any,
    ) -> None:
        if llm is None and embedding is None:
            raise ConfigError("LocalStack needs llm= or embedding= (or both)")
        self.llm, self.embedding, self.engine, self.host = llm, embedding, engine, host
        self._llm_ports = list(llm_ports) if llm is not None else []
        self._embedding_port = embedding_port
        self._gateway_port = gateway_port
        self._max_concurrent = max_concurrent_requests
        self._engine_options = engine_options
        self._gateway_options = dict(gateway_options or {})
        self._loop: LoopThread | None = None
        self.llm_servers: list[EngineServer] = []
        self.embedding_server: EngineServer | None = None
        self.gateway: UnifiedAPIServer | None = None
        self.llm_ports: list[int] = []
        self.embedding_port: int | None = None
        self.port: int | None = None

    # -- addresses --------------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        """``http://host:port/v1`` of the gateway."""
        if self.port is None:
            raise RuntimeError("the stack has no gateway running; call start() first")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def llm_url(self) -> str:
        """``http://host:port/v1`` of the first LLM engine server."""
        if not self.llm_ports:
            raise RuntimeError("the stack has no LLM engine running")
        return f"http://{self.host}:{self.llm_ports[0]}/v1"

    @property
    def embedding_url(self) -> str:
        """``http://host:port/v1`` of the embedding engine server."""
        if self.embedding_port is None:
            raise RuntimeError("the stack has no embedding engine running")
        return f"http://{self.host}:{self.embedding_port}/v1"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the servers' loop (to stop or restart one server, say)."""
        if self._loop is None:
            raise RuntimeError("the stack is not running; call start() first")
        return self._loop.call(coro, timeout)

    # -- life cycle -------------------------------------------------------------------------

    def start(self, timeout_s: float = 600.0) -> LocalStack:
        """Load the models and start every server; return ``self`` when all are ready.

        Raises:
            ConfigError: a model is not available offline.
            OSError: a port is taken.
        """
        from sage.inference.engines.factory import build_engine

        self._loop = LoopThread("sage-local-stack")
        try:
            for port in self._llm_ports:
                assert self.llm is not None
                server = EngineServer(
                    build_engine("llm", self.llm, self.engine, **self._engine_options),
                    self.host,
                    port,
                )
                self.llm_servers.append(server)
                self.llm_ports.append(self._loop.call(server.start(), timeout_s))
            if self.embedding is not None:
                self.embedding_server = EngineServer(
                    build_engine("embedding", self.embedding, self.engine, **self._engine_options),
                    self.host,
                    self._embedding_port,
                )
                self.embedding_port = self._loop.call(self.embedding_server.start(), timeout_s)
            if self._gateway_port is not None:
                self.gateway = UnifiedAPIServer(self._gateway_config(self._gateway_port))
                self.port = self._loop.call(self.gateway.start_async(), timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _gateway_config(self, port: int) -> UnifiedServerConfig:
        llm = [
            BackendInstanceConfig(
                host=self.host,
                port=p,
                model_name=server.engine.model_name,
                max_concurrent_requests=self._max_concurrent,
            )
            for p, server in zip(self.llm_ports, self.llm_servers, strict=True)
        ]
        embedding = []
        if self.embedding_server is not None and self.embedding_port is not None:
            embedding.append(
                BackendInstanceConfig(
                    host=self.host,
                    port=self.embedding_port,
                    model_name=self.embedding_server.engine.model_name,
                    instance_type="embedding",
                    max_concurrent_requests=self._max_concurrent,
                )
            )
        return UnifiedServerConfig(
            host=self.host,
            port=port,
            llm_backends=llm,
            embedding_backends=embedding,
            **self._gateway_options,
        )

    def stop(self) -> None:
        """Stop the gateway, then the engines (idempotent)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self.gateway is not None:
            loop.call(self.gateway.stop_async())
        for server in [*self.llm_servers, self.embedding_server]:
            if server is not None:
                loop.call(server.stop())
        loop.stop()
        self.gateway, self.embedding_server, self.port, self.embedding_port = None, None, None, None
        self.llm_servers, self.llm_ports = [], []

    def __enter__(self) -> LocalStack:
        return self.start() if self._loop is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
