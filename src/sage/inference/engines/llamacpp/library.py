"""The llama.cpp library through llama-cpp-python's ctypes bindings: a loaded GGUF model
(weights memory-mapped and kept quantised) with its vocabulary, and contexts on it.

Only the C API is used (``llama_cpp.llama_cpp``), not llama-cpp-python's ``Llama`` class:
the engine schedules many sequences in one context itself. llama.cpp's own log lines go to
the ``sage.inference.engines.llamacpp.native`` logger instead of the terminal.
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache
from pathlib import Path
from typing import Any

from sage.common.errors import ConfigError

__all__ = ["LlamaModel", "library"]

logger = logging.getLogger(__name__)
native_logger = logging.getLogger("sage.inference.engines.llamacpp.native")

INSTALL_HINT = (
    "pip install llama-cpp-python==0.3.36 (it builds from source with cmake and a C++ "
    "compiler, about 12 minutes on 2 cores, once; pip caches the wheel), or run make demo"
)

# ggml_log_level -> logging level (llama.cpp's INFO lines are loading chatter: DEBUG here)
_LEVELS = {
    0: logging.DEBUG,
    1: logging.DEBUG,
    2: logging.DEBUG,
    3: logging.WARNING,
    4: logging.ERROR,
}
_callback: Any = None  # kept alive: llama.cpp holds the pointer


@cache
def library() -> Any:
    """The ``llama_cpp.llama_cpp`` module, with the backend initialised and its logs routed
    to logging.

    Raises:
        ConfigError: llama-cpp-python is not installed (the message says how to install it).
    """
    global _callback
    try:
        import llama_cpp.llama_cpp as lib
    except ImportError as exc:
        raise ConfigError(f"the llama.cpp engine needs llama-cpp-python: {INSTALL_HINT}") from exc
    state = {"level": logging.DEBUG}

    @lib.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if level != 5:  # 5: continues the previous line
            state["level"] = _LEVELS.get(level, logging.DEBUG)
        line = text.decode("utf-8", "replace").rstrip()
        level = state["level"]
        if "n_ctx_seq" in line:  # the engine bounds each request by the training context
            level = logging.DEBUG  # itself; the shared KV cache may well be larger
        if native_logger.isEnabledFor(level):
            native_logger.log(level, "%s", line)

    _callback = forward
    lib.llama_log_set(forward, ctypes.c_void_p(0))
    lib.llama_backend_init()
    return lib


class LlamaModel:
    """A GGUF model loaded by llama.cpp: its vocabulary, metadata and chat template.

    Args:
        path: The GGUF file.

    Raises:
        ConfigError: llama-cpp-python is missing, or the file is not a model llama.cpp loads.
    """

    def __init__(self, path: Path) -> None:
        self.lib = lib = library()
        self.path = path
        params = lib.llama_model_default_params()
        params.use_mmap = True  # the weights stay in the page cache, quantised, shared
        params.n_gpu_layers = 0
        self.ptr = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise ConfigError(
                f"llama.cpp could not load {path}: is it a GGUF model file? "
                "(the log of sage.inference.engines.llamacpp.native says why)"
            )
        self.vocab = lib.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(self.ptr))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self.vocab))
        self.size_bytes = os.path.getsize(path)
        self._eog = [bool(lib.llama_vocab_is_eog(self.vocab, t)) for t in range(self.n_vocab)]

    def close(self) -> None:
        """Free the model (its contexts first)."""
        if self.ptr:
            self.lib.llama_model_free(self.ptr)
            self.ptr = None

    # -- metadata ---------------------------------------------------------------------------

    def chat_template(self) -> str | None:
        """The model's Jinja chat template (``tokenizer.chat_template``), if it has one."""
        raw = self.lib.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8") if raw else None

    def special_token(self, which: str) -> str:
        """The text of the ``bos`` or ``eos`` token ("" when the model has none)."""
        lib = self.lib
        token = (
            lib.llama_vocab_bos(self.vocab) if which == "bos" else lib.llama_vocab_eos(self.vocab)
        )
        return self.piece(token, special=True).decode("utf-8", "replace") if token >= 0 else ""

    # -- tokens -------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        """Token ids of ``text`` (``add_special``: with BOS/EOS as the model asks;
        ``parse_special``: ``<|im_start|>`` and the like become their control tokens)."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (ctypes.c_int32 * capacity)()
        n = self.lib.llama_tokenize(
            self.vocab, data, len(data), tokens, capacity, add_special, parse_special
        )
        if n < 0:  # cannot happen with a byte per token and then some, but be exact
            tokens = (ctypes.c_int32 * -n)()
            n = self.lib.llama_tokenize(
                self.vocab, data, len(data), tokens, -n, add_special, parse_special
            )
        return list(tokens[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (control tokens render as "" unless ``special``)."""
        buffer = ctypes.create_string_buffer(64)
        n = self.lib.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self.vocab, token, buffer, -n, 0, special)
        return buffer.raw[:n]

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends generation (EOS, EOT, ``<|im_end|>``...)."""
        return 0 <= token < self.n_vocab and self._eog[token]
