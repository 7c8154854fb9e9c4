"""VDBService: what the service layer costs, what the batch path buys, what HNSW trades.

One process run, on one index of 100,000 clustered 384-d unit vectors (like MiniLM text
embeddings), 1,000 queries from the same distribution, top-10, cosine:

1. **Service overhead**: one 2-D batch search through ``self.call_service`` from an
   operator (validation, normalisation, locking, hits with metadata), timed inside the
   operator, vs ``index.search`` on the very same FAISS index. Target: overhead <= 10%.
2. **Batch path vs one call per query**: the same 1,000 queries as one 2-D call vs 1,000
   calls of one vector each, both through ``call_service``. Target: >= 20x. Also the add
   path: 10,000 vectors in one call vs one call each.
3. **HNSW vs flat**: queries per second and recall@10 against the exact flat results.

Cases are interleaved over several rounds and medians reported (see ``_common.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import Case, interleave, report
from sage.common.core.functions.map_function import MapFunction
from sage.kernel.api.local_environment import LocalEnvironment
from sage.middleware.services.vdb import VDBService

N, DIM, QUERIES, TOP_K = 100_000, 384, 1_000, 10
SINGLES = 200  # queries sent one call each (compared per query with the batch)


def clustered(n: int, seed: int) -> np.ndarray:
    centres = np.random.default_rng(DIM).normal(size=(200, DIM))
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, 200, n)] + 0.35 * rng.normal(size=(n, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


class Timed(MapFunction):
    """Runs ``work(self)`` once per record and returns the seconds it took."""

    def __init__(self, work: Callable[[Any], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.work = work

    def execute(self, _: Any) -> float:
        start = time.perf_counter()
        self.work(self)
        return time.perf_counter() - start


def through_service(vdb: VDBService, work: Callable[[Any], Any]) -> float:
    """Seconds ``work`` takes inside an operator of a job that has ``vdb`` as a service."""
    env = LocalEnvironment("vdb_bench")
    env.register_service("vdb", lambda: vdb)
    out: list[float] = []
    env.from_collection([0]).map(Timed, work).sink(out.append)
    env.submit()
    return out[0]


def case(name: str, seconds: Callable[[], float], records: int) -> Case:
    """A case timed by ``seconds()`` (the work inside the job, not the job around it)."""
    return Case(name, records=records, timed=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()

    data, queries = clustered(N, 0), clustered(QUERIES, 1)
    flat, hnsw = VDBService(index="flat"), VDBService(index="hnsw")
    start = time.perf_counter()
    flat.add(data)
    flat_build = time.perf_counter() - start
    start = time.perf_counter()
    hnsw.add(data)
    hnsw_build = time.perf_counter() - start
    raw_flat, raw_hnsw = flat.vectors._index, hnsw.vectors._index  # the same FAISS objects
    normalised = queries / np.linalg.norm(queries, axis=1, keepdims=True)

    def raw(index: Any) -> Callable[[], float]:
        def seconds() -> float:
            start = time.perf_counter()
            index.search(normalised, TOP_K)
            return time.perf_counter() - start

        return seconds

    def batch(vdb: VDBService) -> Callable[[], float]:
        return lambda: through_service(
            vdb, lambda fn: fn.call_service["vdb"].search(queries, top_k=TOP_K)
        )

    singles = queries[:SINGLES]

    def one_by_one(vdb: VDBService) -> Callable[[], float]:
        def work(fn: Any) -> None:
            search = fn.call_service["vdb"].search
            for q in singles:
                search(q, top_k=TOP_K)

        return lambda: through_service(vdb, work)

    cases = {
        "raw_flat": case("raw FAISS flat, 1 batch", raw(raw_flat), QUERIES),
        "svc_flat": case("call_service flat, 1 batch", batch(flat), QUERIES),
        "one_flat": case("call_service flat, 1 call per query", one_by_one(flat), SINGLES),
        "raw_hnsw": case("raw FAISS hnsw, 1 batch", raw(raw_hnsw), QUERIES),
        "svc_hnsw": case("call_service hnsw, 1 batch", batch(hnsw), QUERIES),
        "one_hnsw": case("call_service hnsw, 1 call per query", one_by_one(hnsw), SINGLES),
    }
    interleave(list(cases.values()), args.rounds)

    adds = clustered(10_000, 2)

    def add_batch() -> float:
        target = VDBService(dim=DIM)
        return through_service(target, lambda fn: fn.call_service["vdb"].add(adds))

    def add_each() -> float:
        target = VDBService(dim=DIM)

        def work(fn: Any) -> None:
            add = fn.call_service["vdb"].add
            for v in adds:
                add(v)

        return through_service(target, work)

    add_cases = [case("add, 1 call", add_batch, 10_000), case("add, 1 call each", add_each, 10_000)]
    interleave(add_cases, args.rounds)

    exact = flat.search(queries, top_k=TOP_K)
    approx = hnsw.search(queries, top_k=TOP_K)
    recall = float(
        np.mean(
            [
                len({h["id"] for h in a} & {h["id"] for h in e}) / TOP_K  # type: ignore[index]
                for a, e in zip(approx, exact, strict=True)
            ]
        )
    )

    c = cases
    # paired per round (the two ran back to back): speed of raw relative to the service
    overhead_flat = c["raw_flat"].ratio_to(c["svc_flat"]) - 1
    overhead_hnsw = c["raw_hnsw"].ratio_to(c["svc_hnsw"]) - 1
    lines = [
        f"{N:,} clustered {DIM}-d vectors, {QUERIES:,} queries, top-{TOP_K}, cosine; "
        f"{args.rounds} interleaved rounds, medians; overheads paired per round. "
        f"Build: flat {flat_build:.1f} s, "
        f"hnsw {hnsw_build:.1f} s (M=32, efConstruction=64, efSearch=64).",
        "",
        "| case | time | queries/s | result | target |",
        "|---|---:|---:|---|---|",
    ]

    def row(case: Case, result: str = "", target: str = "") -> None:
        lines.append(
            f"| {case.name} | {case.median_s * 1e3:,.1f} ms | {case.rate:,.0f} | {result} "
            f"| {target} |"
        )

    row(c["raw_flat"])
    row(c["svc_flat"], f"service overhead {overhead_flat:+.1%}", "<= 10%")
    row(
        c["one_flat"],
        f"batch path {c['svc_flat'].rate / c['one_flat'].rate:.1f}x faster per query",
        ">= 20x",
    )
    row(
        c["raw_hnsw"],
        f"recall@10 {recall:.3f} vs flat; {c['raw_hnsw'].rate / c['raw_flat'].rate:.0f}x flat QPS",
    )
    row(c["svc_hnsw"], f"service overhead {overhead_hnsw:+.1%}", "<= 10%")
    row(
        c["one_hnsw"],
        f"batch path {c['svc_hnsw'].rate / c['one_hnsw'].rate:.1f}x faster per query",
        ">= 20x",
    )
    add_batch_case, add_each_case = add_cases
    lines.append(
        f"| 10,000 adds, 1 call | {add_batch_case.median_s * 1e3:,.1f} ms | "
        f"{add_batch_case.rate:,.0f} | batch path "
        f"{add_each_case.median_s / add_batch_case.median_s:.0f}x faster than 1 call each | |"
    )
    gpus = flat.vectors.faiss.get_num_gpus()
    lines += [
        "",
        f"GPU: {gpus} visible to FAISS"
        + ("." if gpus else "; no GPU figures on this machine (CPU FAISS build)."),
    ]
    report("vdb_service", "VDB service", lines, args.write_readme)


if __name__ == "__main__":
    main()
