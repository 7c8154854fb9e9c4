"""Compile a logical pipeline into a :class:`~sage.kernel.graph.plan.PhysicalPlan`.

One call, :func:`compile_plan`, validates the pipeline, chooses each edge's partitioning,
fuses chainable edges, and lays out the parallel tasks with the number of end-of-stream
markers each must count before it ends.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage.common.errors import PlanError
from sage.kernel.graph.chaining import is_chainable
from sage.kernel.graph.logical import LogicalNode, OpKind
from sage.kernel.graph.partition import Partitioning
from sage.kernel.graph.plan import Chain, PhysicalEdge, PhysicalPlan, PhysicalTask

__all__ = ["choose_partitioning", "compile_plan"]


def choose_partitioning(up: LogicalNode, down: LogicalNode) -> Partitioning:
    """The partitioning of edge ``up -> down``.

    After ``keyby`` it is always ``HASH``; otherwise an explicit ``broadcast()``/
    ``rebalance()`` wins, then ``FORWARD`` for equal parallelism, else ``ROUND_ROBIN``.
    """
    if up.kind is OpKind.KEYBY:
        return Partitioning.HASH
    if down.input_partitioning is not None:
        return down.input_partitioning
    return Partitioning.FORWARD if up.parallelism == down.parallelism else Partitioning.ROUND_ROBIN


def _validate(nodes: Sequence[LogicalNode]) -> None:
    if not any(n.kind is OpKind.SOURCE for n in nodes):
        raise PlanError(
            "the pipeline has no source; start it with env.from_collection(...), "
            "env.from_source(...) or env.from_batch(...)"
        )
    for node in nodes:
        if node.kind is OpKind.JOIN:
            unkeyed = [nodes[i].name for i in node.inputs if nodes[i].kind is not OpKind.KEYBY]
            if unkeyed:
                raise PlanError(
                    f"{node.name}: a join needs keyed inputs, but {', '.join(unkeyed)} "
                    "is not keyed; call .keyby(...) on each stream before .connect(...)"
                )
        if node.kind is OpKind.KEYBY and node.input_partitioning is Partitioning.BROADCAST:
            raise PlanError(f"{node.name}: broadcasting into keyby is not supported")


def compile_plan(
    job_name: str, nodes: Sequence[LogicalNode], *, chaining: bool = True
) -> PhysicalPlan:
    """Compile ``nodes`` (a topologically ordered logical pipeline) into a physical plan.

    Args:
        job_name: Name shown in the plan.
        nodes: The logical pipeline, as returned by ``LogicalGraph.nodes()``.
        chaining: Fuse chainable edges (``False`` puts every operator in its own task).

    Raises:
        PlanError: the pipeline has no source, or joins unkeyed streams.
    """
    nodes = tuple(nodes)
    _validate(nodes)
    consumers: dict[int, int] = {n.id: 0 for n in nodes}
    for node in nodes:
        for up_id in node.inputs:
            consumers[up_id] += 1

    chain_nodes: list[list[int]] = []
    chain_of: dict[int, int] = {}
    for node in nodes:
        if len(node.inputs) == 1:
            up = nodes[node.inputs[0]]
            part = choose_partitioning(up, node)
            if is_chainable(
                up, node, part, up_consumers=consumers[up.id], chaining_enabled=chaining
            ):
                cid = chain_of[up.id]
                chain_nodes[cid].append(node.id)
                chain_of[node.id] = cid
                continue
        chain_of[node.id] = len(chain_nodes)
        chain_nodes.append([node.id])

    chains = tuple(
        Chain(id=i, node_ids=tuple(ids), parallelism=nodes[ids[0]].parallelism)
        for i, ids in enumerate(chain_nodes)
    )
    edges: list[PhysicalEdge] = []
    for node in nodes:
        for index, up_id in enumerate(node.inputs):
            src, dst = chain_of[up_id], chain_of[node.id]
            if src == dst:
                continue  # fused
            up = nodes[up_id]
            edges.append(
                PhysicalEdge(
                    src_chain=src,
                    dst_chain=dst,
                    partitioning=choose_partitioning(up, node),
                    input_index=index,
                    keyed=up.kind is OpKind.KEYBY,
                )
            )

    tasks: list[PhysicalTask] = []
    for chain in chains:
        expected = sum(
            1 if e.partitioning is Partitioning.FORWARD else chains[e.src_chain].parallelism
            for e in edges
            if e.dst_chain == chain.id
        )
        tasks.extend(PhysicalTask(chain.id, i, expected) for i in range(chain.parallelism))

    keyed = frozenset(
        n.id for n in nodes if n.inputs and all(nodes[i].kind is OpKind.KEYBY for i in n.inputs)
    )
    return PhysicalPlan(
        job_name=job_name,
        nodes=nodes,
        chains=chains,
        edges=tuple(edges),
        tasks=tuple(tasks),
        keyed_nodes=keyed,
    )
