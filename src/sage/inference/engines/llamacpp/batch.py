"""One ``llama_batch`` over numpy arrays, filled a step at a time without a per-token
ctypes call: each token belongs to one sequence, whose id sits in a flat array that the
batch's ``seq_id`` pointers point into."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Batch"]


class Batch:
    """Up to ``capacity`` tokens for one ``llama_decode`` call.

    Args:
        lib: ``llama_cpp.llama_cpp``.
        capacity: Most tokens per call (the context's ``n_batch``).
    """

    def __init__(self, lib: Any, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        base = self.seq.ctypes.data
        self._seq_ptrs = (ctypes.POINTER(ctypes.c_int32) * capacity)(
            *(ctypes.cast(base + 4 * i, ctypes.POINTER(ctypes.c_int32)) for i in range(capacity))
        )
        self.struct = lib.llama_batch()
        self.struct.token = self.token.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.embd = None
        self.struct.pos = self.pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.seq_id = ctypes.cast(
            self._seq_ptrs, ctypes.POINTER(ctypes.POINTER(ctypes.c_int32))
        )
        self.struct.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    @property
    def room(self) -> int:
        """Tokens that still fit."""
        return self.capacity - self.n

    def add(self, tokens: Sequence[int], start: int, seq: int, last_output: bool) -> None:
        """Tokens of sequence ``seq`` at positions ``start...``; the last one outputs logits
        when ``last_output``."""
        n, end = self.n, self.n + len(tokens)
        self.token[n:end] = tokens
        self.pos[n:end] = np.arange(start, start + len(tokens), dtype=np.int32)
        self.seq[n:end] = seq
        self.logits[n:end] = 0
        if last_output:
            self.logits[end - 1] = 1
        self.n = end

    def ready(self) -> Any:
        """The ``llama_batch`` to pass to ``llama_decode``."""
        self.struct.n_tokens = self.n
        return self.struct
