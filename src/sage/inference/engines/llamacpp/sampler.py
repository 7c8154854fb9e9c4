"""A request's sampling parameters as a llama.cpp sampler chain (one per sequence, so
every request in the running batch samples by its own parameters)."""

from __future__ import annotations

import ctypes
from typing import Any

from sage.inference.engines.base import SamplingParams

__all__ = ["plain_greedy", "sampler_chain"]

_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks one


def sampler_chain(lib: Any, n_vocab: int, params: SamplingParams) -> Any:
    """A new sampler chain for ``params`` (free it with ``llama_sampler_free``).

    In order: logit bias, frequency and presence penalties (OpenAI's formula, over the
    tokens generated so far), then greedy choice at temperature 0, else top-k, top-p,
    min-p, temperature and a draw seeded by ``seed``. (A structured answer's constraint
    masks the logits before the chain runs: :mod:`.structured`.)
    """
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    add = lib.llama_sampler_chain_add
    try:
        if params.logit_bias:
            biases = (lib.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                biases[i].token, biases[i].bias = token, bias
            add(chain, lib.llama_sampler_init_logit_bias(n_vocab, len(biases), biases))
        if params.frequency_penalty or params.presence_penalty:
            add(
                chain,
                lib.llama_sampler_init_penalties(
                    n_vocab,
                    params.max_tokens,
                    1.0,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.temperature <= 0:
            add(chain, lib.llama_sampler_init_greedy())
            return chain
        if params.top_k > 0:
            add(chain, lib.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(chain, lib.llama_sampler_init_min_p(params.min_p, 1))
        add(chain, lib.llama_sampler_init_temp(params.temperature))
        seed = _RANDOM_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        add(chain, lib.llama_sampler_init_dist(ctypes.c_uint32(seed).value))
        return chain
    except BaseException:
        lib.llama_sampler_free(chain)
        raise


def plain_greedy(params: SamplingParams) -> bool:
    """Whether ``params`` pick the likeliest token with nothing adjusting the logits (the
    engine then takes the argmax itself: a chain would copy the whole vocabulary first)."""
    return params.temperature <= 0 and not params.adjusts_logits
