"""Entry points of the processes ``sage llm serve`` starts: one per engine, one gateway.

``python -m sage.inference.deploy.serving engine --kind llm --model smollm2 --port 8001``
``python -m sage.inference.deploy.serving gateway --config gateway.json``
``python -m sage.inference.deploy.serving engine --kind llm --model sim-7b
--engine simulated --port 8001 --sim-profile '{"max_batch": 8}'`` (a GPU-instance simulator)

Each writes ``ready <port>`` to the file descriptor given by ``--ready-fd`` once it listens,
so the parent waits on that pipe (no polling) and learns at once if the child died instead.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from sage.common.concurrency import run_loop
from sage.common.processes import serve_until_signalled
from sage.inference.config import BackendInstanceConfig, UnifiedServerConfig
from sage.inference.engines.factory import ENGINES, build_engine
from sage.inference.engines.server import EngineServer
from sage.inference.gateway.server import UnifiedAPIServer

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sage-llm-process")
    sub = parser.add_subparsers(dest="what", required=True)
    engine = sub.add_parser("engine")
    engine.add_argument("--kind", choices=("llm", "embedding"), required=True)
    engine.add_argument("--model", required=True)
    engine.add_argument("--engine", default="cpu", choices=[e for e in ENGINES if e != "vllm"])
    engine.add_argument("--host", default="127.0.0.1")
    engine.add_argument("--port", type=int, required=True)
    engine.add_argument("--max-batch", type=int, default=8)
    engine.add_argument(
        "--threads",
        type=int,
        help="CPU engines: compute threads (default: all cores; give each of N engines "
        "sharing a machine cores/N, or their threads spin against each other)",
    )
    engine.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="transformers and embedding engines (default float32)",
    )
    engine.add_argument(
        "--max-model-len",
        type=int,
        help="most tokens of one request, prompt and answer: the LLM engine's context "
        "length (default: the model's own; llama.cpp: its share of the KV cache)",
    )
    engine.add_argument(
        "--sim-profile",
        help="simulated engine: a JSON object of SimulatorProfile fields, "
        """e.g. '{"max_batch": 8}'""",
    )
    engine.add_argument("--ready-fd", type=int)
    gateway = sub.add_parser("gateway")
    gateway.add_argument("--config", required=True)
    gateway.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.what == "engine":
        options: dict[str, Any] = {
            "max_batch": args.max_batch,
            "dtype": args.dtype,
            "threads": args.threads,
        }
        if args.max_model_len is not None:
            if args.max_model_len < 1:
                parser.error(f"--max-model-len {args.max_model_len}: give an integer >= 1")
            options["context_length"] = args.max_model_len
        if args.sim_profile is not None:
            if args.engine != "simulated":
                parser.error("--sim-profile is for --engine simulated")
            from sage.common.errors import ConfigError
            from sage.inference.engines.simulated import SimulatorProfile

            try:
                options["profile"] = SimulatorProfile.from_json(args.sim_profile)
            except ConfigError as exc:
                parser.error(f"--sim-profile: {exc}")
        server = EngineServer(
            build_engine(args.kind, args.model, args.engine, **options),
            args.host,
            args.port,
        )
        run = serve_until_signalled(server.start, server.stop, args.ready_fd)
    else:
        with open(args.config, encoding="utf-8") as fh:
            raw = json.load(fh)
        for key in ("llm_backends", "embedding_backends"):
            raw[key] = [BackendInstanceConfig(**b) for b in raw.get(key, [])]
        api = UnifiedAPIServer(UnifiedServerConfig(**raw))
        run = serve_until_signalled(api.start_async, api.stop_async, args.ready_fd)
    run_loop(run)


if __name__ == "__main__":  # pragma: no cover
    main()
