"""The reference's embedding names: ``get_dim()``, ``method_name``, the ``ollama`` method and
``openai`` with a ``base_url``, tested against real HTTP servers on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from recording_server import RecordingServer
from sage.common.concurrency import LoopThread
from sage.common.errors import ConfigError, GatewayError
from sage.common.http import HttpServer, Request, Response
from sage.inference.client.embedding import (
    EmbeddingClientAdapter,
    EmbeddingFactory,
    HashEmbedding,
    OllamaEmbedding,
    OpenAIEmbedding,
)


class FakeOllama:
    """An Ollama-shaped ``POST /api/embed`` on loopback that records each request body.

    ``answer`` picks the reply: "ok" (``[len(text), 1, 2]`` per text), "missing" (Ollama's
    404 for an unpulled model), "short" (one vector too few), "foreign" (no ``embeddings``).
    """

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.answer = "ok"
        self._lock = threading.Lock()
        self._loop = LoopThread("test-fake-ollama")
        self._http = HttpServer("test-fake-ollama")
        self._http.route("POST", "/api/embed", self._embed)
        self.port = self._loop.call(self._http.start("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.port}"

    async def _embed(self, request: Request) -> Response:
        body = request.json()
        with self._lock:
            self.bodies.append(body)
        texts = body["input"]
        if self.answer == "missing":
            error = {"error": f'model "{body["model"]}" not found, try pulling it first'}
            return Response(status=404, body=orjson.dumps(error))
        vectors = [[float(len(t)), 1.0, 2.0] for t in texts]
        if self.answer == "short":
            vectors = vectors[:-1]
        reply = {"data": vectors} if self.answer == "foreign" else {"embeddings": vectors}
        return Response(status=200, body=orjson.dumps({"model": body["model"], **reply}))

    def stop(self) -> None:
        self._loop.call(self._http.close())
        self._loop.stop()


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    server = FakeOllama()
    yield server
    server.stop()


@pytest.fixture
def fresh(ollama: FakeOllama) -> FakeOllama:
    ollama.bodies.clear()
    ollama.answer = "ok"
    return ollama


@pytest.fixture(scope="module")
def openai_server() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def test_ollama_embeds_through_api_embed(fresh: FakeOllama) -> None:
    embedder = EmbeddingFactory.create("ollama", model="nomic-embed-text", base_url=fresh.url)
    assert isinstance(embedder, OllamaEmbedding) and embedder.method_name == "ollama"
    assert embedder.embed_batch(["ab", "abcd"]) == [[2.0, 1.0, 2.0], [4.0, 1.0, 2.0]]
    assert embedder.embed("xyz") == [3.0, 1.0, 2.0]
    assert fresh.bodies == [
        {"model": "nomic-embed-text", "input": ["ab", "abcd"]},
        {"model": "nomic-embed-text", "input": ["xyz"]},
    ]
    assert embedder.get_dim() == 3 and len(fresh.bodies) == 2  # learnt from an answer, no probe


def test_ollama_get_dim_probes_once_and_caches(fresh: FakeOllama) -> None:
    embedder = EmbeddingFactory.create("ollama", base_url=fresh.url + "/")
    assert embedder.get_dim() == 3 and embedder.get_dim() == 3
    assert fresh.bodies == [{"model": "nomic-embed-text", "input": ["dimension probe"]}]
    assert EmbeddingClientAdapter(embedder).dimension == 3


def test_a_given_dim_needs_no_probe_and_is_checked(fresh: FakeOllama) -> None:
    assert EmbeddingFactory.create("ollama", base_url=fresh.url, dim=3).get_dim() == 3
    assert fresh.bodies == []
    wrong = EmbeddingFactory.create("ollama", base_url=fresh.url, dim=768)
    with pytest.raises(GatewayError, match=r"3-dimensional vectors, not dim=768.*leave dim out"):
        wrong.embed("text")


def test_ollama_errors_name_the_fix(fresh: FakeOllama) -> None:
    embedder = OllamaEmbedding(model="absent-model", base_url=fresh.url)
    fresh.answer = "missing"
    with pytest.raises(GatewayError, match=r"404 .*not found.*ollama pull absent-model") as err:
        embedder.embed("text")
    assert err.value.status == 404
    fresh.answer = "short"
    with pytest.raises(GatewayError, match=r"answered 1 vectors for 2 texts"):
        embedder.embed_batch(["a", "b"])
    fresh.answer = "foreign"
    with pytest.raises(GatewayError, match=r"without 'embeddings'; is it an Ollama server"):
        embedder.embed("a")
    assert embedder.embed_batch([]) == [] and len(fresh.bodies) == 3  # no request for nothing


def test_ollama_unreachable_says_start_it() -> None:
    from sage.common.config.ports import SagePorts

    nobody = f"http://127.0.0.1:{SagePorts.any_free_port()}"
    with pytest.raises(GatewayError, match=r"cannot reach Ollama at .*ollama serve.*base_url="):
        OllamaEmbedding(base_url=nobody).embed("text")


def test_openai_takes_any_compatible_base_url(openai_server: RecordingServer) -> None:
    embedder = EmbeddingFactory.create("openai", model="rec-emb", base_url=openai_server.url)
    assert isinstance(embedder, OpenAIEmbedding) and embedder.method_name == "openai"
    before = len(openai_server.seen)
    assert embedder.embed_batch(["ab", "abc"]) == [[2.0, 1.0], [3.0, 1.0]]
    assert embedder.get_dim() == 2
    seen = openai_server.seen[before:]
    assert [(s.path, s.body) for s in seen] == [
        ("/v1/embeddings", {"model": "rec-emb", "input": ["ab", "abc"]})
    ]
    probed = OpenAIEmbedding("rec-emb", openai_server.url, api_key="k")
    assert probed.get_dim() == 2 and probed.get_dim() == 2
    assert openai_server.seen[-1].body == {"model": "rec-emb", "input": ["dimension probe"]}
    assert len(openai_server.seen) == before + 2


def test_hash_names() -> None:
    hashed = EmbeddingFactory.create("hash", dim=16)
    assert isinstance(hashed, HashEmbedding)
    assert (hashed.method_name, hashed.method, hashed.get_dim()) == ("hash", "hash", 16)
    assert len(hashed.embed("some words")) == hashed.get_dim()


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        (
            "word2vec",
            {},
            r"method 'word2vec'; use one of hf, hash, openai, ollama",
        ),
        (3, {}, r"method=3 must be a string"),
        ("ollama", {"base_url": "127.0.0.1:11434"}, r"base_url='127.0.0.1:11434' must be an http"),
        ("ollama", {"model": ""}, r"model='' must name"),
        ("ollama", {"dim": 0}, r"dim=0 must be a positive integer"),
        ("openai", {"model": "m", "base_url": "http://x/v1", "dim": "768"}, r"dim='768'"),
        ("openai", {"model": "m", "base_url": None}, r"base_url=None"),
    ],
)
def test_bad_inputs_are_clear_errors(method: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EmbeddingFactory.create(method, **kwargs)
