"""A CPU LLM engine on transformers, with continuous (step-level) batching.

One worker thread owns the model and a running batch. At every decoding step it:

1. admits requests that arrived meanwhile (up to ``max_batch``): their prompts are prefilled
   together and their caches merged into the running batch (the shorter side left-padded),
   so a new request joins at the next step instead of waiting for the batch to finish;
2. decodes one token for every active sequence in one forward pass (left-padded batch with
   explicit position ids, which reproduces single-sequence greedy output exactly);
3. hands each sequence's new text to its request, and drops finished or cancelled ones.

With nothing to do the thread blocks on its request queue (no polling). The model is loaded
from the packaged GGUF (dequantised to float32; converted once into a cached checkpoint, see
``gguf_cache``) or any transformers checkpoint directory.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sage.common.errors import ConfigError
from sage.inference.engines.base import (
    Delta,
    LLMEngine,
    SamplingParams,
    join_thread,
)
from sage.inference.engines.gguf import converted_checkpoint
from sage.inference.engines.kv_cache import new_cache
from sage.inference.engines.models import ModelSpec
from sage.inference.engines.text import AnswerText

__all__ = ["TransformersLLMEngine"]

logger = logging.getLogger(__name__)


class _Sequence:
    """One request being generated."""

    __slots__ = (
        "answer",
        "cancelled",
        "finished",
        "generator",
        "loop",
        "params",
        "prompt_ids",
        "queue",
        "tokens",
    )

    def __init__(
        self, prompt_ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.loop = loop
        self.queue: asyncio.Queue[Delta] = asyncio.Queue()
        self.tokens: list[int] = []
        self.answer = AnswerText(params.stop)
        self.finished = False
        self.cancelled = False
        self.generator: Any = None

    def send(self, delta: Delta) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)


class TransformersLLMEngine(LLMEngine):
    """SmolLM2 (or any causal LM transformers loads) on the CPU; see the module docstring.

    Args:
        spec: Where the model is (see ``sage.inference.engines.models.resolve_model``).
        max_batch: Sequences decoded together at most.
        threads: Torch intra-op threads (default: torch's choice).
        dtype: ``float32`` (default: the reference numerics) or ``bfloat16`` (about 2.5x
            faster prefill on CPUs with AMX or AVX512-BF16; outputs may differ slightly).
        context_length: Most tokens of one request, prompt and answer (default, and at
            most: the model's ``max_position_embeddings``).
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        max_batch: int = 8,
        threads: int | None = None,
        dtype: str = "float32",
        context_length: int | None = None,
    ) -> None:
        if dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype={dtype!r} is not supported on CPU; use float32 or bfloat16")
        self.dtype = dtype
        self.spec = spec
        self.model_name = spec.name
        self.aliases = spec.aliases
        self.max_batch = max_batch
        self.threads = threads
        self._context_length = context_length
        self._incoming: queue.Queue[_Sequence | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._torch: Any = None
        self.tokenizer: Any = None
        self.model: Any = None
        self.steps = 0
        self.batched_tokens = 0

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.load)
        self._worker = threading.Thread(
            target=self._run, name=f"sage-llm-{self.model_name}", daemon=True
        )
        self._worker.start()

    def load(self) -> None:
        """Load tokenizer and model (blocking; ``start`` runs it off the event loop)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        if self.threads:
            torch.set_num_threads(self.threads)
        kwargs: dict[str, Any] = {}
        path = str(self.spec.path)
        if self.spec.gguf_file:
            try:
                path = str(converted_checkpoint(self.spec.path, self.spec.gguf_file))
            except OSError as exc:  # no writable cache: read the GGUF itself (slower)
                logger.warning("cannot cache a converted copy of the GGUF model: %s", exc)
                kwargs["gguf_file"] = self.spec.gguf_file
        self.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, self.dtype), **kwargs
        )
        self.model = model.eval()
        trained = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.context_length = min(self._context_length or trained, trained)
        self.vocab_size = int(self.model.config.vocab_size)
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self._eos = {int(i) for i in ids if i is not None}

    async def stop(self) -> None:
        if self._worker is not None:
            self._incoming.put(None)
            await join_thread(self._worker)
            self._worker = None

    # -- requests ---------------------------------------------------------------------------

    def _prompt_ids(
        self, messages: Sequence[dict[str, Any]] | None, prompt: str | None
    ) -> list[int]:
        tokenizer = self.tokenizer
        if messages is not None:
            ids = tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=True
            )
            if hasattr(ids, "get"):  # some versions return a BatchEncoding
                ids = ids["input_ids"]
            return list(ids)
        return list(tokenizer(prompt or "", add_special_tokens=False)["input_ids"])

    def prompt_tokens(
        self,
        messages: Sequence[dict[str, Any]] | None,
        prompt: str | None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> int:
        return len(self._prompt_ids(messages, prompt))

    async def generate(
        self,
        params: SamplingParams,
        *,
        messages: Sequence[dict[str, Any]] | None = None,
        prompt: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncIterator[Delta]:
        if self._worker is None:
            raise RuntimeError(f"engine {self.model_name!r} is not started; await engine.start()")
        sequence = _Sequence(self._prompt_ids(messages, prompt), params, asyncio.get_running_loop())
        if params.seed is not None:
            sequence.generator = self._torch.Generator().manual_seed(params.seed)
        self._incoming.put(sequence)
        try:
            while True:
                delta = await sequence.queue.get()
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            sequence.cancelled = True  # the caller stopped reading: free its batch slot

    # -- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        torch = self._torch
        with torch.inference_mode():
            active: list[_Sequence] = []
            state: tuple[Any, Any, Any] | None = None  # cache, mask, next tokens
            while True:
                arrived = self._admit(block=not active)
                if arrived is None:
                    return  # stop() was called
                if arrived:
                    try:
                        new_state = self._prefill(arrived)
                    except Exception:  # a bad prompt must not kill the engine
                        logger.exception("prefill failed; ending %d request(s)", len(arrived))
                        for seq in arrived:
                            seq.send(Delta("", finish_reason="stop"))
                        continue
                    # their first tokens go out now; survivors join the running batch
                    arrived, new_state = self._emit_and_prune(arrived, new_state)
                    if arrived:
                        state = new_state if state is None else self._merge(state, new_state)
                        active += arrived
                if active and state is not None:
                    state = self._step(state, active)
                    active, state = self._emit_and_prune(active, state)
                if not active:
                    state = None

    def _admit(self, block: bool) -> list[_Sequence] | None:
        """Requests that arrived; with ``block``, wait for the first. None means stop."""
        arrived: list[_Sequence] = []
        try:
            first = self._incoming.get() if block else self._incoming.get_nowait()
        except queue.Empty:
            return arrived
        if first is None:
            return None
        arrived.append(first)
        while len(arrived) < self.max_batch:
            try:
                item = self._incoming.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._incoming.put(None)  # stop after this batch
                break
            arrived.append(item)
        return arrived

    def _prefill(self, sequences: list[_Sequence]) -> tuple[Any, Any, Any]:
        torch = self._torch
        pad = self.tokenizer.pad_token_id
        longest = max(len(s.prompt_ids) for s in sequences)
        ids = torch.full((len(sequences), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, seq in enumerate(sequences):
            n = len(seq.prompt_ids)
            ids[row, longest - n :] = torch.tensor(seq.prompt_ids, dtype=torch.long)
            mask[row, longest - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=new_cache(),
            use_cache=True,
        )
        tokens = self._sample(out.logits[:, -1], sequences)
        return out.past_key_values, mask, tokens

    def _step(self, state: tuple[Any, Any, Any], active: list[_Sequence]) -> tuple[Any, Any, Any]:
        """Feed every sequence its last token; sample the next one (not emitted yet)."""
        torch = self._torch
        cache, mask, tokens = state
        mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype)], dim=1)
        positions = mask.sum(-1, keepdim=True) - 1
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        self.steps += 1
        self.batched_tokens += int(tokens.shape[0])
        return out.past_key_values, mask, self._sample(out.logits[:, -1], active)

    def _merge(self, a: tuple[Any, Any, Any], b: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
        """Join two batches waiting for their next token: left-pad the shorter, stack rows."""
        torch = self._torch
        pad_to = max(a[1].shape[1], b[1].shape[1])

        def left_pad(tensor: Any, length: int, dim: int) -> Any:
            missing = pad_to - length
            if not missing:
                return tensor
            shape = list(tensor.shape)
            shape[dim] = missing
            return torch.cat([torch.zeros(shape, dtype=tensor.dtype), tensor], dim=dim)

        cache_a, mask_a, tokens_a = a
        cache_b, mask_b, tokens_b = b
        length_a, length_b = mask_a.shape[1], mask_b.shape[1]
        for layer_a, layer_b in zip(cache_a.layers, cache_b.layers, strict=True):
            layer_a.keys = torch.cat(
                [left_pad(layer_a.keys, length_a, 2), left_pad(layer_b.keys, length_b, 2)], dim=0
            )
            layer_a.values = torch.cat(
                [left_pad(layer_a.values, length_a, 2), left_pad(layer_b.values, length_b, 2)],
                dim=0,
            )
        mask = torch.cat([left_pad(mask_a, length_a, 1), left_pad(mask_b, length_b, 1)], dim=0)
        return cache_a, mask, torch.cat([tokens_a, tokens_b])

    def _adjust(self, logits: Any, seq: _Sequence) -> Any:
        """``logits`` of one sequence with its penalties and biases applied (OpenAI's
        formula: minus ``count * frequency_penalty + (count > 0) * presence_penalty``)."""
        torch = self._torch
        p = seq.params
        adjusted = logits.float()
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), dtype=torch.long)
            adjusted[ids] += torch.tensor(list(p.logit_bias.values()), dtype=torch.float32)
        if seq.tokens and (p.frequency_penalty or p.presence_penalty):
            seen, counts = torch.unique(torch.tensor(seq.tokens), return_counts=True)
            adjusted[seen] -= counts.float() * p.frequency_penalty + p.presence_penalty
        return adjusted

    def _sample(self, logits: Any, sequences: list[_Sequence]) -> Any:
        torch = self._torch
        if any(seq.params.adjusts_logits for seq in sequences):
            logits = logits.float().clone()
            for row, seq in enumerate(sequences):
                if seq.params.adjusts_logits:
                    logits[row] = self._adjust(logits[row], seq)
        chosen = logits.argmax(-1)
        for row, seq in enumerate(sequences):
            p = seq.params
            if p.temperature <= 0:
                continue
            probs = torch.softmax(logits[row].float() / p.temperature, dim=-1)
            if p.top_p < 1.0:
                ordered, order = probs.sort(descending=True)
                keep = ordered.cumsum(-1) - ordered < p.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
                probs /= probs.sum()
            chosen[row] = torch.multinomial(probs, 1, generator=seq.generator)[0]
        return chosen

    def _emit_and_prune(
        self, active: list[_Sequence], state: tuple[Any, Any, Any]
    ) -> tuple[list[_Sequence], tuple[Any, Any, Any]]:
        """Give each sequence the token just sampled for it, hand out new text, and drop
        finished or cancelled sequences from the batch."""
        cache, mask, tokens = state
        keep: list[int] = []
        for row, seq in enumerate(active):
            if seq.cancelled:
                continue
            self._advance(seq, int(tokens[row]))
            if not seq.finished:
                keep.append(row)
        if len(keep) < len(active):
            torch = self._torch
            index = torch.tensor(keep, dtype=torch.long)
            if keep:
                cache.batch_select_indices(index)
                mask, tokens = mask[index], tokens[index]
                first = int((mask.sum(0) > 0).nonzero()[0])  # columns that are all padding
                if first:
                    mask = mask[:, first:]
                    for layer in cache.layers:
                        layer.keys = layer.keys[:, :, first:]
                        layer.values = layer.values[:, :, first:]
            active = [active[i] for i in keep]
        return active, (cache, mask, tokens)

    def _advance(self, seq: _Sequence, token: int) -> None:
        params = seq.params
        done_reason = None
        if token in self._eos:
            done_reason = "stop"
        else:
            seq.tokens.append(token)
            if len(seq.tokens) >= params.max_tokens:
                done_reason = "length"
        text = self.tokenizer.decode(seq.tokens, skip_special_tokens=True)
        piece, done_reason = seq.answer.next(text, done_reason)
        if done_reason is None:
            if piece:
                seq.send(Delta(piece))
            return
        seq.finished = True
        seq.send(
            Delta(
                piece,
                finish_reason=done_reason,
                prompt_tokens=len(seq.prompt_ids),
                completion_tokens=len(seq.tokens) + (1 if token in self._eos else 0),
            )
        )
