"""Ports and network region: the seed's 《端口与网络配置》 block (seed 003), runnable offline.

``SagePorts`` gives the documented ports (8901 instead of 8001 for the LLM on WSL2), and
``sage.common.config.network`` decides whether to point Hugging Face at a mirror. On a
machine with no network both answer at once: detection never blocks on a connection and
``ensure_hf_mirror_configured()`` leaves ``HF_ENDPOINT`` alone unless it finds it is in
mainland China (``SAGE_REGION=cn`` says so, or the time zone or locale does).

Run it with ``python examples/ports_and_network.py``.
"""

from __future__ import annotations

# ruff: noqa: I001  (the seed block is kept as written)

import os
from typing import Any


def main() -> dict[str, Any]:
    """Run the seed block; return the ports and region it printed."""
    # --- the seed block, verbatim (seed 003: 端口与网络配置) -------------------------------
    # fmt: off
    from sage.common.config.ports import SagePorts
    from sage.common.config.network import ensure_hf_mirror_configured, detect_china_mainland

    llm_port = SagePorts.get_recommended_llm_port()
    embedding_port = SagePorts.EMBEDDING_DEFAULT

    print("LLM 绑定端口:", llm_port)
    print("Embedding 绑定端口:", embedding_port)

    ensure_hf_mirror_configured()  # 在中国大陆自动设置 HF_ENDPOINT=https://hf-mirror.com
    print("当前网络区域为中国大陆" if detect_china_mainland() else "使用国际默认镜像")
    # fmt: on
    # --- end of the seed block -------------------------------------------------------------
    return {
        "llm_port": llm_port,
        "embedding_port": embedding_port,
        "china": detect_china_mainland(),
        "hf_endpoint": os.environ.get("HF_ENDPOINT"),
    }


if __name__ == "__main__":
    main()
