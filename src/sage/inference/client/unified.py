"""``UnifiedInferenceClient``: one client for chat, generation and embeddings.

Where requests go (``create()``, "control plane first"):

1. ``control_plane_url=`` when given (a gateway or any OpenAI-compatible server);
2. the local gateway (``SagePorts.GATEWAY_DEFAULT`` or ``SAGE_GATEWAY_PORT``);
3. local engine servers (``SAGE_LLM_PORT``, 8001, 8901; ``SAGE_EMBEDDING_PORT``, 8090; or
   ``llm_ports=`` / ``embedding_ports=``);
4. ``.env`` / environment: ``SAGE_CHAT_BASE_URL``, ``SAGE_EMBEDDING_BASE_URL`` (with
   ``SAGE_CHAT_API_KEY``; this is also how a cloud endpoint is reached).

Local probes are loopback requests with a short timeout, so an offline machine with
nothing running answers at once. ``create(embedded=True)`` runs the engines in this process
(no server); ``create_auto()`` tries ``create()`` and falls back to embedded engines.

Every request carries the current scheduling fields
(:func:`~sage.common.core.scheduling.current_scheduling`: those of the dataflow operator
making the call) as the headers ``x-sage-priority`` / ``x-sage-slo-ms``, unless the call
gives ``priority=`` / ``slo_ms=`` itself (sent as body fields, which the gateway prefers).
Headers, because an engine called directly ignores them but refuses unknown body fields.
Answers 429 and 503 are retried after their ``Retry-After`` (see :class:`RetryPolicy`).

Example:
    >>> client = UnifiedInferenceClient.create(embedded=True)      # doctest: +SKIP
    >>> client.chat("What is a Python list?", max_tokens=32)      # doctest: +SKIP
    >>> client.embed(["one", "two"])                              # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import httpx
import orjson

from sage.common.config.settings import load_settings
from sage.common.core.scheduling import current_scheduling
from sage.common.errors import ConfigError, GatewayError
from sage.inference.client import options
from sage.inference.client.answers import answer_text, stream_piece, vectors
from sage.inference.client.discovery import PROBE_TIMEOUT, discover
from sage.inference.client.embedded import EmbeddedEngines
from sage.inference.client.retries import RetryPolicy, apost, astream, post, stream
from sage.inference.config import SchedulingPolicyType
from sage.inference.engines.base import (
    SamplingParams,
)
from sage.inference.protocol import SCHEDULING_HEADERS

__all__ = ["UnifiedInferenceClient"]

Messages = str | Sequence[dict[str, Any]]


def _messages(messages: Messages) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(m) for m in messages]


_PATHS = {"chat": "/chat/completions", "completion": "/completions"}


def _scheduling_headers(given: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The current scheduling fields as headers, less those the call gives itself (``given``:
    its extra body fields)."""
    fields = current_scheduling()
    if fields is None:
        return {}
    return {
        header: str(value)
        for name, header in SCHEDULING_HEADERS.items()
        if (given is None or name not in given) and (value := getattr(fields, name)) is not None
    }


class UnifiedInferenceClient:
    """Chat, generate and embed against SAGE's servers, any OpenAI endpoint, or in-process.

    Build it with :meth:`create`, :meth:`create_auto` or :meth:`get_instance`.
    """

    _instances: ClassVar[dict[str, UnifiedInferenceClient]] = {}
    _instances_lock = threading.Lock()

    def __init__(
        self,
        *,
        mode: str,
        llm_base_url: str | None = None,
        embedding_base_url: str | None = None,
        llm_model: str | None = None,
        embedding_model: str | None = None,
        api_key: str | None = None,
        timeout: float = 300.0,
        embedded: EmbeddedEngines | None = None,
        retry: RetryPolicy | None = None,
        scheduling_policy: SchedulingPolicyType | None = None,
    ) -> None:
        self.mode = mode
        self.scheduling_policy = scheduling_policy
        """The policy asked for at :meth:`create` (recorded and reported, not sent)."""
        self.retry = RetryPolicy() if retry is None else retry
        """How answers 429 and 503 are retried."""
        self.llm_base_url = llm_base_url.rstrip("/") if llm_base_url else None
        self.embedding_base_url = embedding_base_url.rstrip("/") if embedding_base_url else None
        self.llm_model = llm_model
        self.embedding_model = embedding_model
        self._embedded = embedded
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        self._http = httpx.Client(headers=headers, timeout=timeout, limits=limits)
        self._async_http: httpx.AsyncClient | None = None
        self._async_args = {"headers": headers, "timeout": timeout, "limits": limits}

    def __repr__(self) -> str:
        return (
            f"UnifiedInferenceClient(mode={self.mode!r}, "
            f"llm={self.llm_base_url or 'in-process'} [{self.llm_model}], "
            f"embedding={self.embedding_base_url or 'in-process'} [{self.embedding_model}])"
        )

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        control_plane_url: str | None = None,
        *,
        embedded: bool = False,
        default_llm_model: str | None = None,
        default_embedding_model: str | None = None,
        prefer_local: bool = True,
        api_key: str | None = None,
        timeout: float = 300.0,
        env_file: str | None = ".env",
        retry: RetryPolicy | None = None,
        embedding_dtype: str = "float32",
        scheduling_policy: str | None = None,
        llm_ports: Sequence[int] | None = None,
        embedding_ports: Sequence[int] | None = None,
    ) -> UnifiedInferenceClient:
        """A client for the first endpoint found (see the module docstring).

        Args:
            scheduling_policy: A :class:`~sage.inference.config.SchedulingPolicyType` name
                (``fifo``, ``priority``...), checked here and reported by :meth:`get_status`
                as in the SAGE reference; it is not sent: a gateway's policy is its own
                setting, shared by all its clients (``sage llm serve --policy``).
            llm_ports: Local ports probed for LLM engine servers instead of
                ``SAGE_LLM_PORT``/8001/8901 (each server says what it serves; the gateway
                is still tried first).
            embedding_ports: Likewise for embedding servers, instead of
                ``SAGE_EMBEDDING_PORT``/8090.
            retry: How answers 429 and 503 are retried (default: :class:`RetryPolicy`,
                3 tries honouring ``Retry-After`` up to 30 s).
            embedding_dtype: ``embedded=True``: the embedding engine's precision,
                ``float32``, ``bfloat16`` (faster where the CPU has it natively; vectors
                within cosine 0.99998 of float32's) or ``auto``.

        Raises:
            GatewayError: no endpoint answered and none is configured.
        """
        settings = load_settings(env_file)
        policy = options.scheduling_policy(scheduling_policy)
        probes = options.engine_ports(settings, llm_ports, embedding_ports)
        if embedded:
            llm = default_llm_model or "smollm2"
            emb = default_embedding_model or "all-minilm-l6-v2"
            return cls(
                mode="embedded",
                llm_model=llm,
                embedding_model=emb,
                embedded=EmbeddedEngines(llm, emb, embedding_dtype),
                retry=retry,
                scheduling_policy=policy,
            )
        key = api_key or settings.SAGE_API_KEY or settings.SAGE_CHAT_API_KEY
        common: dict[str, Any] = {
            "api_key": key,
            "timeout": timeout,
            "retry": retry,
            "scheduling_policy": policy,
        }
        if control_plane_url:
            models = discover(control_plane_url, key)
            return cls(
                mode="control_plane",
                llm_base_url=control_plane_url,
                embedding_base_url=control_plane_url,
                llm_model=default_llm_model or models.get("llm"),
                embedding_model=default_embedding_model or models.get("embedding"),
                **common,
            )
        tried = []
        if prefer_local:
            gateway = f"http://127.0.0.1:{settings.SAGE_GATEWAY_PORT}/v1"
            tried.append(gateway)
            models = discover(gateway, key)
            if models:
                return cls(
                    mode="gateway",
                    llm_base_url=gateway,
                    embedding_base_url=gateway,
                    llm_model=default_llm_model or models.get("llm"),
                    embedding_model=default_embedding_model or models.get("embedding"),
                    **common,
                )
            found: dict[str, tuple[str, str | None]] = {}
            for port in probes:
                url = f"http://127.0.0.1:{port}/v1"
                tried.append(url)
                for kind, model in discover(url, key).items():
                    found.setdefault(kind, (url, model))
            if found:
                llm_url, llm_name = found.get("llm", (None, None))
                emb_url, emb_name = found.get("embedding", (None, None))
                return cls(
                    mode="local",
                    llm_base_url=llm_url,
                    embedding_base_url=emb_url,
                    llm_model=default_llm_model or llm_name,
                    embedding_model=default_embedding_model or emb_name,
                    **common,
                )
        if settings.SAGE_CHAT_BASE_URL or settings.SAGE_EMBEDDING_BASE_URL:
            return cls(
                mode="env",
                llm_base_url=settings.SAGE_CHAT_BASE_URL,
                embedding_base_url=settings.SAGE_EMBEDDING_BASE_URL or settings.SAGE_CHAT_BASE_URL,
                llm_model=default_llm_model or settings.SAGE_CHAT_MODEL,
                embedding_model=default_embedding_model or settings.SAGE_EMBEDDING_MODEL,
                **common,
            )
        raise GatewayError(
            f"no inference endpoint found (tried {', '.join(tried) or 'nothing local'}, and "
            "SAGE_CHAT_BASE_URL is not set). Start one with `sage llm serve`, set "
            "SAGE_CHAT_BASE_URL in .env, or use UnifiedInferenceClient.create(embedded=True)"
        )

    @classmethod
    def create_auto(cls, **kwargs: Any) -> UnifiedInferenceClient:
        """:meth:`create`, or in-process engines (same ``default_*`` models and
        ``scheduling_policy``) when no endpoint is found."""
        try:
            return cls.create(**kwargs)
        except GatewayError:
            kept = {k: v for k, v in kwargs.items() if k.startswith(("default_", "scheduling_"))}
            return cls.create(embedded=True, **kept)

    @classmethod
    def get_instance(
        cls, key: str | None = None, *, instance_key: str | None = None, **create_kwargs: Any
    ) -> UnifiedInferenceClient:
        """The client registered under ``key`` (default ``"default"``; ``instance_key=`` is the
        SAGE reference's name for it), created (with :meth:`create_auto`) on first use.

        Raises:
            ConfigError: ``key`` and ``instance_key`` both given, and different.
        """
        if key is not None and instance_key is not None and key != instance_key:
            raise ConfigError(
                f"get_instance got key={key!r} and instance_key={instance_key!r}; pass one"
            )
        if key is None:
            key = "default" if instance_key is None else instance_key
        with cls._instances_lock:
            client = cls._instances.get(key)
            if client is None:
                client = cls._instances[key] = cls.create_auto(**create_kwargs)
            return client

    # -- requests ---------------------------------------------------------------------------------

    def _llm(self, model: str | None) -> tuple[str, str]:
        name = model or self.llm_model
        if self.llm_base_url is None or name is None:
            raise GatewayError("no chat model is configured; pass default_llm_model or model=")
        return self.llm_base_url, name

    def _body(self, model: str, extra: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return {"model": model, **{k: v for k, v in fields.items() if v is not None}, **extra}

    def chat(
        self,
        messages: Messages,
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        stream: bool = False,
        **extra: Any,
    ) -> Any:
        """The assistant's answer to ``messages`` (a string, or a list of role/content dicts).

        Returns:
            The answer text, or with ``stream=True`` an iterator of text pieces.
        """
        sampling = (max_tokens, temperature, top_p, stop)
        return self._complete("chat", model, stream, sampling, extra, messages=_messages(messages))

    def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        max_tokens: int | None = 256,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        stream: bool = False,
        **extra: Any,
    ) -> Any:
        """A plain text completion of ``prompt`` (or an iterator of pieces with ``stream``)."""
        sampling = (max_tokens, temperature, top_p, stop)
        return self._complete("completion", model, stream, sampling, extra, prompt=prompt)

    def _complete(
        self,
        kind: str,
        model: str | None,
        stream: bool,
        sampling: tuple[int | None, float | None, float | None, str | list[str] | None],
        extra: dict[str, Any],
        *,
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
    ) -> Any:
        """A ``chat`` or ``completion`` request, in this process or over HTTP."""
        if self._embedded is not None:
            pieces = self._embedded.stream(self._sampling(*sampling), messages, prompt)
            return pieces if stream else "".join(pieces)
        url, name = self._llm(model)
        max_tokens, temperature, top_p, stop = sampling
        body = self._body(
            name,
            extra,
            messages=messages,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
        )
        endpoint = url + _PATHS[kind]
        headers = _scheduling_headers(extra)  # now: a stream's body runs later, elsewhere
        if stream:
            return self._stream(endpoint, {**body, "stream": True}, kind, headers)
        return answer_text(self._post(endpoint, orjson.dumps(body), headers), kind)

    def _post(self, url: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        return post(self._http, self.retry, url, content, headers)

    def _stream(
        self, url: str, body: dict[str, Any], kind: str, headers: dict[str, str]
    ) -> Iterator[str]:
        with stream(self._http, self.retry, url, orjson.dumps(body), headers) as response:
            for line in response.iter_lines():
                if piece := stream_piece(line, kind, url):
                    yield piece

    def embed(self, texts: str | Sequence[str], *, model: str | None = None) -> Any:
        """One vector for one text; a list of vectors for a list of texts."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        if self._embedded is not None:
            found = self._embedded.embed(batch)
        else:
            url, content = self._embedding_request(batch, model)
            found = vectors(self._post(url, content, _scheduling_headers()))
        return found[0] if isinstance(texts, str) else found

    def _embedding_request(self, batch: list[str], model: str | None) -> tuple[str, bytes]:
        name = model or self.embedding_model
        if self.embedding_base_url is None or name is None:
            raise GatewayError("no embedding model is configured; pass default_embedding_model")
        return f"{self.embedding_base_url}/embeddings", orjson.dumps(
            {"model": name, "input": batch}
        )

    @staticmethod
    def _sampling(
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        stop: str | list[str] | None,
    ) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens or 256,
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            stop=[stop] if isinstance(stop, str) else list(stop or []),
        )

    def get_status(self) -> dict[str, Any]:
        """Where requests go, which models, and whether the endpoints answer now.

        Beside the nested ``llm``/``embedding`` parts, the SAGE reference's flat keys:
        ``control_plane_active`` (requests go through a gateway: ``control_plane_url=`` or the
        local gateway), ``llm_available``/``embedding_available`` (a model is configured and
        its endpoint answered just now; in-process engines count as answering, so this loads
        no model), ``llm_base_url``, ``llm_model``, ``embedding_base_url``,
        ``embedding_model`` (``None`` in-process), and ``scheduling_policy``.
        """
        status: dict[str, Any] = {
            "mode": self.mode,
            "llm": {"base_url": self.llm_base_url, "model": self.llm_model},
            "embedding": {"base_url": self.embedding_base_url, "model": self.embedding_model},
        }
        for part in ("llm", "embedding"):
            url = status[part]["base_url"]
            if url is None:
                status[part]["healthy"] = self._embedded is not None
                continue
            try:
                status[part]["healthy"] = (
                    self._http.get(f"{url}/models", timeout=PROBE_TIMEOUT).status_code == 200
                )
            except httpx.HTTPError:
                status[part]["healthy"] = False
        for part in ("llm", "embedding"):
            status[f"{part}_available"] = bool(status[part]["model"] and status[part]["healthy"])
            status[f"{part}_base_url"] = status[part]["base_url"]
            status[f"{part}_model"] = status[part]["model"]
        status["control_plane_active"] = self.mode in ("control_plane", "gateway")
        status["scheduling_policy"] = self.scheduling_policy
        return status

    # -- async twins -------------------------------------------------------------------------

    def _async_client(self) -> httpx.AsyncClient:
        if self._async_http is None:
            self._async_http = httpx.AsyncClient(**self._async_args)  # type: ignore[arg-type]
        return self._async_http

    async def achat(self, messages: Messages, **kwargs: Any) -> Any:
        """:meth:`chat` without blocking the event loop (``stream=True``: an async iterator)."""
        if self._embedded is not None:
            return await asyncio.to_thread(self.chat, messages, **kwargs)
        return await self._acomplete("chat", kwargs, messages=_messages(messages))

    async def agenerate(self, prompt: str, **kwargs: Any) -> Any:
        """:meth:`generate` without blocking the event loop (``stream=True``: an async iterator)."""
        if self._embedded is not None:
            return await asyncio.to_thread(self.generate, prompt, **kwargs)
        return await self._acomplete("completion", kwargs, prompt=prompt)

    async def _acomplete(
        self,
        kind: str,
        kwargs: dict[str, Any],
        *,
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
    ) -> Any:
        stream = kwargs.pop("stream", False)
        url, name = self._llm(kwargs.pop("model", None))
        body = self._body(name, {}, messages=messages, prompt=prompt, **kwargs)
        endpoint = url + _PATHS[kind]
        headers = _scheduling_headers(kwargs)
        if stream:
            return self._astream(endpoint, {**body, "stream": True}, kind, headers)
        return answer_text(await self._apost(endpoint, orjson.dumps(body), headers), kind)

    async def _apost(self, url: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        return await apost(self._async_client(), self.retry, url, content, headers)

    async def _astream(
        self, url: str, body: dict[str, Any], kind: str, headers: dict[str, str]
    ) -> AsyncIterator[str]:
        client, content = self._async_client(), orjson.dumps(body)
        async with astream(client, self.retry, url, content, headers) as response:
            async for line in response.aiter_lines():
                if piece := stream_piece(line, kind, url):
                    yield piece

    async def aembed(self, texts: str | Sequence[str], *, model: str | None = None) -> Any:
        """:meth:`embed` without blocking the event loop."""
        if self._embedded is not None:
            return await asyncio.to_thread(self.embed, texts, model=model)
        batch = [texts] if isinstance(texts, str) else list(texts)
        url, content = self._embedding_request(batch, model)
        found = vectors(await self._apost(url, content, _scheduling_headers()))
        return found[0] if isinstance(texts, str) else found

    def close(self) -> None:
        """Close pooled connections (a closed singleton is forgotten by :meth:`get_instance`)."""
        self._http.close()
        with self._instances_lock:
            for key in [k for k, c in self._instances.items() if c is self]:
                del self._instances[key]

    @staticmethod
    def shutdown_embedded() -> None:
        """Stop the in-process engines that embedded clients share (they restart on next use).

        Called at interpreter exit; call it earlier to free the models' memory.
        """
        EmbeddedEngines.shutdown()

    async def aclose(self) -> None:
        """Close pooled connections (async twin)."""
        self._http.close()
        if self._async_http is not None:
            await self._async_http.aclose()

    def __enter__(self) -> UnifiedInferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
