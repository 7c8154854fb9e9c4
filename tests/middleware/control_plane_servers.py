"""Engine servers for the tests of ``ControlPlaneVLLMService``: two LLM engine servers and an
embedding one on free loopback ports, all on one event-loop thread of the test, and the
config's ``instances`` over them.

Each test module brings its own LLM engines (a stub that waits at a gate, a stub that notes
what it received) and its own config around :meth:`StubServers.instances`::

    servers = StubServers(LoopThread("t"), [StubLLMEngine("m"), StubLLMEngine("m")],
                          StubEmbeddingEngine("e"))
    config = {"scheduling_policy": "fifo", "instances": servers.instances()}
    ...
    servers.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sage.common.concurrency import LoopThread
from sage.inference.engines.base import EmbeddingEngine, LLMEngine
from sage.inference.engines.server import EngineServer

__all__ = ["StubServers"]


class StubServers:
    """The LLM engines' servers and the embedding engine's, started on ``loop``.

    Attributes:
        loop: The thread serving them all (stopped by :meth:`close`).
        llm: The LLM engines' servers, in the order given.
        embedding: The embedding engine's server.
        ports: The port of each LLM server, then the embedding server's.
        servers: Every server started here (:meth:`close` stops them).
    """

    def __init__(
        self, loop: LoopThread, llm: Sequence[LLMEngine], embedding: EmbeddingEngine
    ) -> None:
        self.loop = loop
        self.llm = [EngineServer(engine) for engine in llm]
        self.embedding = EngineServer(embedding)
        self.servers = [*self.llm, self.embedding]
        self.ports = [self.loop.call(server.start()) for server in self.servers]

    def instances(self, **llm_keys: Any) -> list[dict[str, Any]]:
        """The config's ``instances`` over these servers at ``localhost``: ``llm-a``,
        ``llm-b``... (each with ``llm_keys`` added) and ``emb``."""
        llm = [
            {
                "instance_id": f"llm-{chr(ord('a') + index)}",
                "host": "localhost",
                "port": server.port,
                "model_name": server.engine.model_name,
                **llm_keys,
            }
            for index, server in enumerate(self.llm)
        ]
        return [
            *llm,
            {
                "instance_id": "emb",
                "host": "localhost",
                "port": self.embedding.port,
                "model_name": self.embedding.engine.model_name,
                "instance_type": "embedding",
            },
        ]

    def start(self, server: EngineServer) -> int:
        """Start one more server on the loop (stopped by :meth:`close`); its port."""
        self.servers.append(server)
        port: int = self.loop.call(server.start())
        return port

    def stop(self, server: EngineServer) -> None:
        """Stop ``server`` now (its instance stops answering)."""
        self.loop.call(server.stop())

    def llm_requests(self) -> list[int]:
        """Requests each LLM server has received."""
        return [server.requests for server in self.llm]

    def close(self) -> None:
        """Stop every server, then the loop."""
        for server in self.servers:
            self.loop.call(server.stop())
        self.loop.stop()
