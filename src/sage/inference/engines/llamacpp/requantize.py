"""A GGUF model requantised once to another llama.cpp type, cached beside the converted
checkpoints (``$SAGE_CACHE_DIR/models``), for weights whose type llama.cpp has no fast
x86 matrix kernels for: on this project's 2-core AMD machines SmolLM2's packaged Q4_1 file
prefills at 419 tokens/s, its Q8_0 requantisation at 772 (and decodes as fast), with
8 bits per weight instead of 4 and no visible change in its answers.

The copy is keyed by the source file's name, size and modification time, written to a
temporary name and renamed into place, so concurrent first loads are safe.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from sage.common.errors import ConfigError
from sage.inference.engines.gguf import cache_root
from sage.inference.engines.llamacpp.library import library

__all__ = ["TYPES", "requantized"]

logger = logging.getLogger(__name__)

TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}
"""The types a model may be requantised to (llama.cpp's file types)."""


def requantized(gguf: Path, kind: str) -> Path:
    """``gguf`` requantised to ``kind`` (``q8_0``); made on first use.

    Raises:
        ConfigError: an unknown type, or llama.cpp could not write the copy.
    """
    if kind not in TYPES:
        raise ConfigError(f"cannot requantise to {kind!r}; use one of {', '.join(TYPES)}")
    stat = gguf.stat()
    target = (
        cache_root() / "models" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}.{kind}.gguf"
    )
    if target.is_file():
        return target
    lib = library()
    logger.info("requantising %s to %s under %s (once)", gguf.name, kind, target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, TYPES[kind])
    params.allow_requantize = True
    params.nthread = len(os.sched_getaffinity(0))
    status = lib.llama_model_quantize(
        str(gguf).encode(), str(partial).encode(), ctypes.byref(params)
    )
    if status != 0:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"llama.cpp could not requantise {gguf} to {kind} ({status})")
    partial.rename(target)
    return target
