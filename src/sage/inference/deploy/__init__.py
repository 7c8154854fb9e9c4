"""Running the stack: engines and a gateway in this process (:class:`~.stack.LocalStack`) or
as processes of their own (:mod:`.processes`, what ``sage llm serve`` starts)."""

from sage.inference.deploy.stack import LocalStack

__all__ = ["LocalStack"]
