"""``sage llm``: start, inspect and stop the local inference stack.

``sage llm serve`` starts one process per engine (the LLM on ``SagePorts.LLM_DEFAULT`` or
8901 on WSL2, the embedding model on ``SagePorts.EMBEDDING_DEFAULT``) and the gateway on
``SagePorts.GATEWAY_DEFAULT`` with the engines registered as its instances. State and logs
live in ``$SAGE_HOME/llm`` (default ``~/.sage/llm``).
"""

from sage.cli.llm import control, serve  # noqa: F401  (they register their commands)
from sage.cli.llm.app import console, llm_app
from sage.cli.llm.state import load_state, state_dir

__all__ = ["console", "llm_app", "load_state", "state_dir"]
