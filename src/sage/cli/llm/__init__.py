"""``sage llm``: start, inspect, restart and stop the local inference stack.

``sage llm serve`` starts one process per engine (the LLM on ``SagePorts.LLM_DEFAULT`` or
8901 on WSL2, the embedding model on ``SagePorts.EMBEDDING_DEFAULT`` unless
``--no-embedding``) and the gateway on ``SagePorts.GATEWAY_DEFAULT`` with the engines
registered as its instances. State (with serve's arguments, which ``sage llm restart``
starts again) and logs live in ``$SAGE_HOME/llm`` (default ``~/.sage/llm``). ``sage llm
gpu`` shows which engine process uses which GPU.
"""

from sage.cli.llm import control, gpu, restart, serve  # noqa: F401  (they register commands)
from sage.cli.llm.app import console, llm_app
from sage.cli.llm.engines import engine_app
from sage.cli.llm.state import load_state, state_dir

llm_app.add_typer(engine_app, name="engine")

__all__ = ["console", "llm_app", "load_state", "state_dir"]
