"""The physical execution graph: chains of fused operators, their parallel tasks and edges.

Plain frozen data: printable with :meth:`PhysicalPlan.explain`, comparable in tests, and
runnable by any runtime (threads locally, actors on Ray).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sage.kernel.graph.logical import LogicalNode
from sage.kernel.graph.partition import Partitioning

__all__ = ["Chain", "PhysicalEdge", "PhysicalPlan", "PhysicalTask"]


@dataclass(frozen=True)
class Chain:
    """Operators fused into one task, run ``parallelism`` times.

    Attributes:
        id: Index of the chain in the plan.
        node_ids: The fused logical nodes, upstream first.
        parallelism: Number of parallel tasks.
    """

    id: int
    node_ids: tuple[int, ...]
    parallelism: int

    @property
    def head(self) -> int:
        """The first node (the one that reads the task's input)."""
        return self.node_ids[0]

    @property
    def tail(self) -> int:
        """The last node (the one whose output leaves the task)."""
        return self.node_ids[-1]


@dataclass(frozen=True)
class PhysicalEdge:
    """Records flowing from every task of ``src_chain`` to tasks of ``dst_chain``.

    Attributes:
        src_chain: Producing chain.
        dst_chain: Consuming chain.
        partitioning: How records are spread over the consuming tasks.
        input_index: Which input of the consuming head this edge is (0 unless connected).
        keyed: Records travel as ``(key, record)`` pairs (the edge leaves a ``keyby``).
    """

    src_chain: int
    dst_chain: int
    partitioning: Partitioning
    input_index: int
    keyed: bool


@dataclass(frozen=True)
class PhysicalTask:
    """One parallel instance of a chain.

    Attributes:
        chain_id: The chain it runs.
        index: Instance index within the chain (0-based).
        expected_eos: End-of-stream markers it must receive before it ends (one per
            upstream task that feeds it).
    """

    chain_id: int
    index: int
    expected_eos: int

    @property
    def id(self) -> str:
        """``"chain2#0"``."""
        return f"chain{self.chain_id}#{self.index}"


@dataclass(frozen=True)
class PhysicalPlan:
    """The compiled job: logical nodes, chains, edges between chains, and tasks."""

    job_name: str
    nodes: tuple[LogicalNode, ...]
    chains: tuple[Chain, ...]
    edges: tuple[PhysicalEdge, ...]
    tasks: tuple[PhysicalTask, ...]
    keyed_nodes: frozenset[int]

    def chain_of(self, node_id: int) -> Chain:
        """The chain that contains ``node_id``."""
        for chain in self.chains:
            if node_id in chain.node_ids:
                return chain
        raise KeyError(node_id)

    def in_edges(self, chain_id: int) -> tuple[PhysicalEdge, ...]:
        """Edges entering ``chain_id``, ordered by input index."""
        return tuple(
            sorted((e for e in self.edges if e.dst_chain == chain_id), key=lambda e: e.input_index)
        )

    def out_edges(self, chain_id: int) -> tuple[PhysicalEdge, ...]:
        """Edges leaving ``chain_id``."""
        return tuple(e for e in self.edges if e.src_chain == chain_id)

    def chain_name(self, chain: Chain) -> str:
        """``"source 'range' -> map 'Double'"``."""
        return " -> ".join(self.nodes[n].name for n in chain.node_ids)

    def explain(self) -> str:
        """A readable description of chains, tasks and edge partitioning."""
        n_tasks = len(self.tasks)
        lines = [
            f"Physical plan of job {self.job_name!r}: {len(self.nodes)} operators, "
            f"{len(self.chains)} chains, {n_tasks} tasks (threads)"
        ]
        for chain in self.chains:
            fused = " [fused]" if len(chain.node_ids) > 1 else ""
            lines.append(
                f"  chain {chain.id} x{chain.parallelism}{fused}: {self.chain_name(chain)}"
            )
            for node_id in chain.node_ids:
                node = self.nodes[node_id]
                keyed = " (keyed state)" if node_id in self.keyed_nodes else ""
                fields = "" if node.scheduling is None else f" {node.scheduling.describe()}"
                lines.append(f"      {node.name} parallelism={node.parallelism}{fields}{keyed}")
            for edge in self.out_edges(chain.id):
                keyed = ", (key, record) pairs" if edge.keyed else ""
                lines.append(
                    f"    --{edge.partitioning.value}--> chain {edge.dst_chain} "
                    f"(input {edge.input_index}{keyed})"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (for the dashboard and tests)."""
        return {
            "job": self.job_name,
            "operators": [
                {
                    "id": n.id,
                    "name": n.name,
                    "kind": n.kind.value,
                    "parallelism": n.parallelism,
                    "inputs": list(n.inputs),
                    "keyed": n.id in self.keyed_nodes,
                }
                for n in self.nodes
            ],
            "chains": [
                {"id": c.id, "operators": list(c.node_ids), "parallelism": c.parallelism}
                for c in self.chains
            ],
            "edges": [
                {
                    "from": e.src_chain,
                    "to": e.dst_chain,
                    "partitioning": e.partitioning.value,
                    "input": e.input_index,
                    "keyed": e.keyed,
                }
                for e in self.edges
            ],
            "tasks": [t.id for t in self.tasks],
        }
