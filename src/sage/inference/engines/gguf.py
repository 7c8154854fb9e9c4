"""A converted copy of a GGUF model, so it loads in seconds instead of half a minute.

transformers reads a GGUF file slowly: it parses the file's metadata three times (config,
tokenizer, weights) and rebuilds a tensor-name map for every tensor, about 30 s for the
135M-parameter SmolLM2 on a small VM, every time a process starts. The first load here
converts the file into an ordinary checkpoint (``config.json``, ``model.safetensors``,
``tokenizer.json``; weights dequantised to float32, exactly what loading the GGUF gives) under
``$SAGE_CACHE_DIR`` (default ``~/.cache/sage``); later loads read that.

The copy is keyed by the GGUF file's name, size and modification time, written to a temporary
directory and renamed into place, so concurrent first loads in several processes are safe.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["cache_root", "converted_checkpoint"]

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$SAGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/sage``, else ``~/.cache/sage``."""
    explicit = os.environ.get("SAGE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sage"


def _key(gguf: Path) -> str:
    stat = gguf.stat()
    return f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def converted_checkpoint(directory: Path, gguf_file: str) -> Path:
    """A checkpoint directory equivalent to ``directory/gguf_file``; converted on first use.

    Raises:
        OSError: the cache directory cannot be written (the caller may load the GGUF).
    """
    gguf = directory / gguf_file
    target = cache_root() / "models" / _key(gguf)
    if (target / "config.json").is_file():
        return target
    logger.info("converting %s to a checkpoint under %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert(directory, gguf_file, scratch)
        try:
            scratch.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _convert(directory: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    loaded: Any = AutoModelForCausalLM.from_pretrained(
        str(directory), gguf_file=gguf_file, dtype=torch.float32
    )
    # A model loaded from GGUF refuses save_pretrained; its tensors are plain float32, so
    # move them into a model built from the same config without the quantisation marker.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
