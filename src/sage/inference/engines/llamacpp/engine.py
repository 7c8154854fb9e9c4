"""The llama.cpp CPU engine: a GGUF model served with continuous batching and a prefix cache.

One worker thread owns a llama.cpp context with ``slots`` sequences, each with its own part
of the KV cache (a sequence attends only to its own cells, as in llama.cpp's server; one
pool shared by all measured 8% slower at 8 requests at once); see :mod:`.slots` for the
prefix cache. At every step it builds one batch: the next token of every sequence
that is generating, then as much of the waiting prompts as fits (``batch_tokens``), so a
new request joins at the next step and a long prompt never stalls the others for more than
a step. After ``llama_decode`` every sequence that produced logits samples its next token
with its own sampler chain (:mod:`.sampler`), and its new text goes to its request. With
nothing to do the thread blocks on its queue (no polling); ``llama_decode`` releases the
GIL, so the HTTP server keeps answering while the model computes. A request whose caller
stops reading is dropped before the next step, the step under way the last to compute it
(counted in :meth:`step_figures`).

The weights stay quantised and memory-mapped: a 4 GB Q4 GGUF takes 4 GB, not 28.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from time import perf_counter
from typing import Any

import numpy as np

from sage.inference.engines.base import (
    Delta,
    EngineOverloaded,
    LLMEngine,
    SamplingParams,
    StepFigures,
    TokenLogprob,
    join_thread,
)
from sage.inference.engines.chat_template import CHATML, ChatTemplate
from sage.inference.engines.llamacpp.batch import Batch
from sage.inference.engines.llamacpp.library import LlamaModel
from sage.inference.engines.llamacpp.requantize import requantized
from sage.inference.engines.llamacpp.sampler import plain_greedy, sampler_chain
from sage.inference.engines.llamacpp.sequence import SequenceState, token_logprob
from sage.inference.engines.llamacpp.slots import Slot, SlotTable
from sage.inference.engines.llamacpp.structured import TOKENIZERS, JsonConstraint, check_schema
from sage.inference.engines.models import ModelSpec
from sage.inference.engines.tools import native_tool_messages, with_tools
from sage.inference.protocol import ENGINE_OPTIONAL

__all__ = ["LlamaCppEngine"]

logger = logging.getLogger(__name__)


class LlamaCppEngine(LLMEngine):
    """A GGUF model on llama.cpp; see the module docstring.

    Args:
        spec: Where the model is (``spec.gguf_file`` inside ``spec.path``).
        slots: Sequences decoded together at most (also the prefix cache's entries).
        threads: CPU threads for llama.cpp (default: the cores this process may use).
        context_length: Most tokens of one request, prompt and answer: each slot's part of
            the KV cache (default: ``kv_tokens / slots``).
        kv_tokens: Tokens the KV cache holds in all (default: ``slots * context_length``
            when that is given, else 16384, and at most ``slots`` training contexts).
        batch_tokens: Most tokens computed in one step (prompt chunks are cut to fit).
    """

    engine_name = "llama.cpp"
    honours = frozenset().union(*ENGINE_OPTIONAL.values())  # every optional field

    def __init__(
        self,
        spec: ModelSpec,
        *,
        slots: int = 8,
        threads: int | None = None,
        context_length: int | None = None,
        kv_tokens: int | None = None,
        batch_tokens: int = 512,
    ) -> None:
        if spec.gguf_file is None:
            raise ValueError(f"{spec.name}: the llama.cpp engine serves GGUF files")
        self.spec = spec
        self.model_name = spec.name
        self.aliases = spec.aliases
        self.n_slots = slots
        self.threads = threads or len(os.sched_getaffinity(0))
        self._context_length = context_length
        self._kv_tokens = kv_tokens
        self.batch_tokens = batch_tokens
        self.model: LlamaModel | None = None
        self.template: ChatTemplate | None = None
        self._ctx: Any = None
        self._incoming: queue.Queue[SequenceState | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._tokens: OrderedDict[tuple[str, bool], list[int]] = OrderedDict()
        self.steps = 0
        self.batched_tokens = 0
        self._outbox: list[tuple[SequenceState, Delta]] = []  # the step's deltas
        self.compute_seconds = 0.0  # in llama_decode
        self.busy_seconds = 0.0  # in steps (llama_decode, sampling, handing out text)
        self.figures = StepFigures()  # written by the worker (``steps`` aside)

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.load)
        self._worker = threading.Thread(
            target=self._run, name=f"sage-llama-{self.model_name}", daemon=True
        )
        self._worker.start()

    def load(self) -> None:
        """Map the model and make its context (blocking; ``start`` runs it off the loop)."""
        assert self.spec.gguf_file is not None
        path = self.spec.path / self.spec.gguf_file
        if self.spec.requantize is not None:
            path = requantized(path, self.spec.requantize)
        model = LlamaModel(path)
        lib = model.lib
        per_slot = self._context_length or (self._kv_tokens or 16384) // self.n_slots
        self.context_length = min(per_slot, model.n_ctx_train)
        kv = self.context_length * self.n_slots
        params = lib.llama_context_default_params()
        params.n_ctx = kv
        params.n_batch = params.n_ubatch = self.batch_tokens
        params.n_seq_max = self.n_slots
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = False  # a part per slot (see the module docstring)
        params.no_perf = True
        ctx = lib.llama_init_from_model(model.ptr, params)
        if not ctx:
            model.close()
            raise RuntimeError(
                f"llama.cpp could not make a context of {kv} tokens for {self.spec.name}; "
                "lower kv_tokens or slots"
            )
        self.model, self._ctx = model, ctx
        self._memory = lib.llama_get_memory(ctx)
        self.kv_tokens = kv
        self.vocab_size = model.n_vocab
        self.template = ChatTemplate(
            model.chat_template() or CHATML, model.special_token("bos"), model.special_token("eos")
        )
        self._slots = SlotTable(self.n_slots)
        self._batch = Batch(lib, self.batch_tokens)
        logger.info(
            "llama.cpp: %s, %d slots, %d-token KV cache, %d-token context, %d threads",
            self.spec.gguf_file,
            self.n_slots,
            kv,
            self.context_length,
            self.threads,
        )

    async def stop(self) -> None:
        if self._worker is not None:
            self._incoming.put(None)
            await join_thread(self._worker)
            self._worker = None
        if self.model is not None:
            self.model.lib.llama_free(self._ctx)
            self._ctx = None
            self.model.close()
            self.model = None

    def step_figures(self) -> StepFigures:
        return replace(self.figures, steps=self.steps)

    def check(self, params: SamplingParams) -> None:
        if params.json_schema is not None:
            check_schema(params.json_schema)

    # -- prompts ------------------------------------------------------------------------------

    def render(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> str:
        """A conversation as the model's chat template lays it out, with ``tools`` offered:
        by the template itself when it knows tools, else described in the system message
        (:mod:`~sage.inference.engines.tools`)."""
        assert self.template is not None, "engine not started"
        if self.template.renders_tools:
            return self.template.render(native_tool_messages(messages), tools=tools)
        return self.template.render(with_tools(messages, tools))

    def tokenize(self, text: str, *, chat: bool) -> list[int]:
        """The prompt's tokens (a chat's template writes its special tokens itself;
        a completion prompt gets BOS when the model asks for it). Kept for a moment, as
        the server counts a prompt's tokens just before generating."""
        key = (text, chat)
        cached = self._tokens.get(key)
        if cached is None:
            assert self.model is not None, "engine not started"
            cached = self.model.tokenize(text, add_special=not chat)
            self._tokens[key] = cached
            if len(self._tokens) > 64:
                self._tokens.popitem(last=False)
        return cached

    def _prompt_ids(
        self,
        messages: Sequence[dict[str, Any]] | None,
        prompt: str | None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        if messages is not None:
            return self.tokenize(self.render(messages, tools), chat=True)
        return self.tokenize(prompt or "", chat=False)

    def prompt_tokens(
        self,
        messages: Sequence[dict[str, Any]] | None,
        prompt: str | None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> int:
        return len(self._prompt_ids(messages, prompt, tools))

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
        if params.json_schema is not None:  # llguidance's vocabulary: built once, off the loop
            assert self.model is not None
            await asyncio.to_thread(TOKENIZERS.of, self.model.vocab)
        ids = self._prompt_ids(messages, prompt, tools)
        if not ids:
            ids = [self._bos_or_zero()]
        request = SequenceState(ids, params, asyncio.get_running_loop())
        self._incoming.put(request)
        try:
            while True:
                item = await request.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # The caller stopped reading (or the answer ended): the worker frees the slot
            # before its next step; the step under way, if any, is the last to compute it.
            request.cancelled = True

    def _bos_or_zero(self) -> int:
        assert self.model is not None
        bos = int(self.model.lib.llama_vocab_bos(self.model.vocab))
        return bos if bos >= 0 else 0

    # -- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        waiting: deque[SequenceState] = deque()
        active: list[SequenceState] = []
        while True:
            try:
                self.figures.running, self.figures.waiting = len(active), len(waiting)
                if not self._take(waiting, block=not active and not waiting):
                    break
                while waiting:
                    request = waiting[0]
                    if request.cancelled:  # its caller left while it waited
                        waiting.popleft()
                        self._end(request)
                        continue
                    placement = self._slots.place(request.prompt)
                    if placement is None:
                        break
                    waiting.popleft()
                    if self._begin(request, placement.slot, placement.source, placement.reused):
                        active.append(request)
                for request in active:
                    if request.cancelled and not request.done:
                        self._end(request)
                active = [r for r in active if not r.done]
                self.figures.running, self.figures.waiting = len(active), len(waiting)
                if active:
                    stepping = perf_counter()
                    self._step(active)
                    self.busy_seconds += perf_counter() - stepping
                    active = [r for r in active if not r.done]
            except Exception as exc:  # a bug must not leave clients waiting, nor stop the engine
                logger.exception("the llama.cpp engine failed a step; ending its requests")
                for request in active:
                    request.send(RuntimeError(f"the engine failed: {exc}"))
                    self._forget(request)
                active = []
        stopped = RuntimeError("the engine stopped")
        for request in (*active, *waiting):
            request.send(stopped)

    def _take(self, waiting: deque[SequenceState], block: bool) -> bool:
        """Move arrived requests to ``waiting``; with ``block``, wait for one. False: stop."""
        try:
            item = self._incoming.get() if block else self._incoming.get_nowait()
        except queue.Empty:
            return True
        while True:
            if item is None:
                return False
            waiting.append(item)
            try:
                item = self._incoming.get_nowait()
            except queue.Empty:
                return True

    def _begin(self, request: SequenceState, slot: Slot, source: Slot | None, reused: int) -> bool:
        """Give ``request`` its slot, keeping (or copying in) the reused prefix."""
        assert self.model is not None
        lib, memory = self.model.lib, self._memory
        if source is not None:  # copy the source's part whole (llama.cpp copies only whole
            lib.llama_memory_seq_rm(memory, slot.seq, -1, -1)  # parts), then cut its tail
            lib.llama_memory_seq_cp(memory, source.seq, slot.seq, -1, -1)
            lib.llama_memory_seq_rm(memory, slot.seq, reused, -1)
            slot.tokens = list(request.prompt[:reused])
        elif not lib.llama_memory_seq_rm(memory, slot.seq, reused, -1):
            lib.llama_memory_seq_rm(memory, slot.seq, -1, -1)  # cannot cut: start over
            slot.tokens, reused = [], 0
        else:
            del slot.tokens[reused:]
        request.slot, request.fed, request.cached = slot, reused, reused
        try:
            if not plain_greedy(request.params):  # plain greedy: an argmax, no chain
                request.sampler = sampler_chain(lib, self.model.n_vocab, request.params)
            schema = request.params.json_schema
            if schema is not None:
                request.constraint = JsonConstraint(self.model.vocab, self.model.n_vocab, schema)
        except Exception as exc:  # a schema that cannot be enforced...
            if request.sampler is not None:
                lib.llama_sampler_free(request.sampler)
                request.sampler = None
            slot.busy = False
            request.send(exc)
            return False
        return True

    def _end(self, request: SequenceState) -> None:
        """Release ``request``'s slot (its tokens stay: the prefix cache) and sampler; count
        it if it ends because it was cancelled."""
        if request.cancelled and not request.done:
            self.figures.dropped(request.steps_after_cancel)
        request.done = True
        if request.slot is not None:
            request.slot.busy = False
        if request.sampler is not None:
            assert self.model is not None
            self.model.lib.llama_sampler_free(request.sampler)
            request.sampler = None

    def _step(self, active: list[SequenceState]) -> None:
        """One ``llama_decode`` for the running batch; then sample and hand out text."""
        assert self.model is not None
        lib, batch = self.model.lib, self._batch
        batch.clear()
        outputs: list[tuple[SequenceState, int]] = []
        fed: list[tuple[SequenceState, list[int]]] = []
        # in slot order: with the sequences out of order (requests that came one by one to
        # slots they used before), a step took 30-40% longer here
        active = sorted(active, key=lambda r: r.slot.seq if r.slot else 0)
        for request in active:  # generating: one token each
            if request.next_token is not None and batch.room:
                slot = request.slot
                assert slot is not None
                batch.add([request.next_token], len(slot.tokens), slot.seq, True)
                outputs.append((request, batch.n - 1))
                fed.append((request, [request.next_token]))
        for request in active:  # prompts: as much as fits
            if request.next_token is None and request.fed < len(request.prompt) and batch.room:
                slot = request.slot
                assert slot is not None
                chunk = request.prompt[request.fed : request.fed + batch.room]
                last = request.fed + len(chunk) == len(request.prompt)
                batch.add(chunk, request.fed, slot.seq, last)
                if last:
                    outputs.append((request, batch.n - 1))
                fed.append((request, chunk))
        if not batch.n:
            return
        computing = perf_counter()
        status = lib.llama_decode(self._ctx, batch.ready())
        self.compute_seconds += perf_counter() - computing
        if status != 0:  # 1: no room in a slot's cells (the server's context check prevents it)
            error: Exception = RuntimeError(f"llama_decode failed ({status}); see its log")
            if status == 1:
                error = EngineOverloaded(
                    f"a slot's part of the KV cache ({self.context_length} tokens) is full; "
                    "retry with a shorter prompt or max_tokens"
                )
            for request, _ in fed:
                request.send(error)
                self._forget(request)
            return
        self.steps += 1
        self.batched_tokens += batch.n
        for request, tokens in fed:
            if request.cancelled:  # cancelled before this step ended (``_sample`` ends it)
                request.steps_after_cancel += 1
            slot = request.slot
            assert slot is not None
            slot.tokens.extend(tokens)
            if request.next_token is not None:
                request.next_token = None
            else:
                request.fed += len(tokens)
        try:
            self._sample(outputs)
        finally:
            self._flush()

    def _sample(self, outputs: list[tuple[SequenceState, int]]) -> None:
        """Each sequence's next token from its row of the step's logits (in output order)."""
        assert self.model is not None
        lib = self.model.lib
        rows = np.ctypeslib.as_array(
            lib.llama_get_logits(self._ctx), shape=(len(outputs), self.model.n_vocab)
        )
        best: np.ndarray | None = None  # plain greedy rows' argmax, in one call
        for row, (request, index) in enumerate(outputs):
            if request.cancelled:
                self._end(request)
                continue
            logits = rows[row]  # llama.cpp's buffer: a mask written here is what it samples
            if request.constraint is not None:
                request.constraint.apply(logits)
                token = int(logits.argmax()) if request.sampler is None else -1
            elif request.sampler is None:
                if best is None:
                    best = rows.argmax(axis=1)
                token = int(best[row])
            else:
                token = -1
            if token < 0:
                token = int(lib.llama_sampler_sample(request.sampler, self._ctx, index))
            if request.constraint is not None:
                request.constraint.accept(token)
            if request.params.logprobs is not None:
                entry = token_logprob(self.model, logits, token, request.params.logprobs)
                request.pending_logprobs.append(entry)
            self._advance(request, token)

    def _flush(self) -> None:
        """Hand the step's deltas to their event loops: one wake-up per loop, not one per
        sequence."""
        outbox, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[SequenceState, Delta]]] = {}
        for request, delta in outbox:
            by_loop.setdefault(request.loop, []).append((request, delta))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _forget(self, request: SequenceState) -> None:
        """End ``request`` and drop what its slot holds (its state is not trusted)."""
        assert self.model is not None
        if request.slot is not None:
            self.model.lib.llama_memory_seq_rm(self._memory, request.slot.seq, -1, -1)
            request.slot.tokens = []
        self._end(request)

    def _advance(self, request: SequenceState, token: int) -> None:
        assert self.model is not None
        params = request.params
        reason = None
        eog = self.model.is_eog(token)
        if eog:
            reason = "stop"
        else:
            request.generated.append(token)
            request.raw += self.model.piece(token)
            if len(request.generated) >= params.max_tokens:
                reason = "length"
            else:
                request.next_token = token
        piece, reason = request.answer.next(request.raw.decode("utf-8", "replace"), reason)
        if reason is None:
            if piece:
                self._outbox.append((request, Delta(piece, logprobs=self._take_logprobs(request))))
            return
        self._end(request)
        self._outbox.append(
            (
                request,
                Delta(
                    piece,
                    finish_reason=reason,
                    prompt_tokens=len(request.prompt),
                    completion_tokens=len(request.generated) + (1 if eog else 0),
                    cached_tokens=request.cached,
                    logprobs=self._take_logprobs(request),
                ),
            )
        )

    @staticmethod
    def _take_logprobs(request: SequenceState) -> list[TokenLogprob] | None:
        if request.params.logprobs is None:
            return None
        taken, request.pending_logprobs = request.pending_logprobs, []
        return taken


def _deliver(items: list[tuple[SequenceState, Delta]]) -> None:
    """On the event loop: give each request its delta."""
    for request, delta in items:
        request.queue.put_nowait(delta)
