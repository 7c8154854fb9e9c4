"""The compiler: logical pipeline → physical execution graph, as plain data (no threads, no Ray)."""

from sage.kernel.graph.compiler import compile_plan
from sage.kernel.graph.logical import LogicalGraph, LogicalNode, OpKind
from sage.kernel.graph.partition import Partitioning, stable_hash
from sage.kernel.graph.plan import Chain, PhysicalEdge, PhysicalPlan, PhysicalTask

__all__ = [
    "Chain",
    "LogicalGraph",
    "LogicalNode",
    "OpKind",
    "Partitioning",
    "PhysicalEdge",
    "PhysicalPlan",
    "PhysicalTask",
    "compile_plan",
    "stable_hash",
]
