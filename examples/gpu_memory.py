"""GPU memory: the seed's 《显存管理》 block (seed 003), runnable with or without a GPU.

``clear_gpu_cache()`` returns cached CUDA blocks to the driver and waits for queued kernels;
``GPUOperator.close()`` calls it when an operator instance ends, so a long-lived job does not
keep memory a finished stage cached. The block uses ``MapFunction`` without importing it;
the import is added above it.

``Normalize`` (below) is a real operator on top of ``GPUOperator``: it L2-normalises vectors
with torch on the GPU when there is one, otherwise on the CPU (where ``clear_gpu_cache`` has
nothing to do). The program prints the device, how many instances closed, and, on a GPU, the
memory cached before and after the job.

Run it with ``python examples/gpu_memory.py``.
"""

from __future__ import annotations

from typing import Any

from sage.kernel.api.local_environment import LocalEnvironment

# isort: off
from sage.common.core.functions.map_function import MapFunction

# --- the seed block, verbatim (seed 003: 显存管理) ---------------------------------------------
# fmt: off
import torch

# 清理 GPU 缓存
def clear_gpu_cache():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.synchronize()

# 在算子 close() 中调用
class GPUOperator(MapFunction):
    def close(self):
        clear_gpu_cache()
# fmt: on
# isort: on
# --- end of the seed block ---------------------------------------------------------------------

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Normalize(GPUOperator):
    """L2-normalise a batch of vectors on ``DEVICE``; return it as a CPU tensor."""

    def execute(self, batch: list[list[float]]) -> Any:
        vectors = torch.tensor(batch, device=DEVICE)
        return torch.nn.functional.normalize(vectors, dim=1).cpu()


def main(n_records: int = 64, dim: int = 1024, parallelism: int = 2) -> dict[str, Any]:
    """Normalise ``n_records`` batches of vectors; return the results and the cache sizes."""
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(32, dim, generator=generator).tolist() for _ in range(n_records)]
    outputs: list[Any] = []
    env = LocalEnvironment("gpu_memory")
    env.from_collection(batches).map(Normalize, parallelism=parallelism).sink(outputs.append)
    env.submit()
    cached = torch.cuda.memory_reserved() if DEVICE == "cuda" else 0
    print(f"device: {DEVICE}; {len(outputs)} batches normalised by {parallelism} instances")
    print(f"CUDA memory cached after the job: {cached} bytes")
    return {"device": DEVICE, "outputs": outputs, "cached": cached}


if __name__ == "__main__":
    main()
