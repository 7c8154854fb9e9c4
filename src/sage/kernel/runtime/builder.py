"""Wire the task loops of a physical plan: functions, heads, fused bodies and routers.

Runtime-agnostic: the caller supplies each task's inbox and the channels of every chain's
tasks (local inboxes, or proxies to remote actors), plus the job's control object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sage.common.core.context import AsyncServiceCaller, RuntimeContext, ServiceCaller
from sage.common.core.functions.flatmap_function import FlatMapFunction
from sage.common.core.scheduling import Scheduling, bind
from sage.common.core.state import KeyedStateBackend
from sage.kernel.config import JobConfig
from sage.kernel.graph.logical import LogicalNode, OpKind, SourceKind
from sage.kernel.graph.plan import PhysicalPlan, PhysicalTask
from sage.kernel.runtime.codegen import BodyStage, FusedBody
from sage.kernel.runtime.collect import TargetFor, attach_collector
from sage.kernel.runtime.error_policy import DeadLetterQueue, ErrorHandler
from sage.kernel.runtime.functions import FunctionInstance, instantiate
from sage.kernel.runtime.heads import (
    BatchHead,
    CollectionSource,
    CoMapHead,
    FunctionSource,
    Head,
    IteratorSource,
    JoinHead,
    PassThroughHead,
)
from sage.kernel.runtime.metrics import OperatorStats, TaskStats
from sage.kernel.runtime.routing import Channel, make_router
from sage.kernel.runtime.task import (
    CheckpointChannel,
    InputChannel,
    JobControl,
    OperatorInstance,
    TaskLoop,
)
from sage.kernel.runtime.window_head import WindowHead

__all__ = ["build_task", "task_scheduling"]


def task_scheduling(
    fields: Sequence[Scheduling | None], job: Scheduling | None
) -> Scheduling | None:
    """The scheduling fields a task makes current for its whole life: those of all its
    operators where they agree (so none pays per record), else the job's (and operators
    with fields of their own set them per call)."""
    return fields[0] if fields and all(f == fields[0] for f in fields) else job


def _scoped(call: Any, fields: Scheduling | None, task: Scheduling | None) -> Any:
    """``call`` (or each of a comap's calls) run with ``fields`` current, where they are
    not the task's already."""
    if fields == task:
        return call
    if isinstance(call, tuple):
        return tuple(bind(c, fields) for c in call)
    return bind(call, fields)


def _source_head(
    node: LogicalNode,
    fn: FunctionInstance,
    task: PhysicalTask,
    config: JobConfig,
    stats: OperatorStats,
) -> Head:
    match node.source_kind:
        case SourceKind.COLLECTION:
            return CollectionSource(fn.call, task.index, node.parallelism, config.batch_size, stats)
        case SourceKind.ITERATOR:
            return IteratorSource(fn.call, config.batch_size, config.max_batch_delay_s, stats)
        case SourceKind.SOURCE_FUNCTION | SourceKind.BATCH_FUNCTION:
            return FunctionSource(
                fn.call,
                none_ends=node.source_kind is SourceKind.BATCH_FUNCTION,
                batch_size=config.batch_size,
                max_delay_s=config.max_batch_delay_s,
                stats=stats,
            )
    raise AssertionError(f"{node.name}: unknown source kind {node.source_kind!r}")


def build_task(
    plan: PhysicalPlan,
    task: PhysicalTask,
    *,
    config: JobConfig,
    control: JobControl,
    dead_letters: DeadLetterQueue,
    inbox: InputChannel | None,
    channels_of: Callable[[int], Sequence[Channel]],
    services: tuple[ServiceCaller, AsyncServiceCaller] | None = None,
    checkpoints: CheckpointChannel | None = None,
    restore: bytes | None = None,
    collectors: TargetFor | None = None,
) -> TaskLoop:
    """Build the loop of ``task``.

    Args:
        plan: The compiled job.
        task: The task to build.
        config: Job settings.
        control: The job's control object.
        dead_letters: Where dead-lettered records go.
        inbox: The task's input channel (``None`` for source tasks).
        channels_of: Channels of a chain's tasks, by instance index.
        services: The job's service callers (sync, async), given to every function.
        checkpoints: Where the task sends its snapshots (``None``: no checkpoints).
        restore: The task's snapshot to resume from (``None``: start afresh).
        collectors: The targets of the job's ``collect()`` operators, by collector id.

    Raises:
        PlanError: a function cannot be constructed or copied for this instance, or it
            collects and ``collectors`` is ``None``.
    """
    chain = plan.chains[task.chain_id]
    nodes = [plan.nodes[i] for i in chain.node_ids]
    in_edges = plan.in_edges(chain.id)
    keyed_input = [e.keyed for e in in_edges]

    job_fields = config.scheduling
    fields = [
        job_fields if node.scheduling is None else node.scheduling.over(job_fields)
        for node in nodes
    ]
    task_fields = task_scheduling(fields, job_fields)
    operators: list[OperatorInstance] = []
    for node, node_fields in zip(nodes, fields, strict=True):
        stats = OperatorStats(node.id, node.name, node.kind.value, task.index, node.parallelism)
        function = instantiate(node, task.index, n_inputs=len(node.inputs))
        attach_collector(function.obj, collectors, node.name)
        context = RuntimeContext(
            job_name=plan.job_name,
            operator_name=node.name,
            instance_index=task.index,
            parallelism=node.parallelism,
            task_id=task.id,
            config=dict(config.raw or {}),
            services=services,
            scheduling=node_fields,
        )
        state = KeyedStateBackend() if node.id in plan.keyed_nodes else None
        operators.append(OperatorInstance(function, context, stats, state))

    def errors(op: OperatorInstance) -> ErrorHandler:
        return ErrorHandler(config.on_error, op.stats, dead_letters)

    def call_of(op: OperatorInstance) -> Any:
        return _scoped(op.function.call, op.context.scheduling, task_fields)

    head_node, head_op = nodes[0], operators[0]
    head_keyed = head_node.id in plan.keyed_nodes
    body_ops: list[tuple[LogicalNode, OperatorInstance]] = list(
        zip(nodes[1:], operators[1:], strict=True)
    )
    pairs_input = False
    head: Head
    match head_node.kind:
        case OpKind.SOURCE:
            head = _source_head(head_node, head_op.function, task, config, head_op.stats)

        case OpKind.BATCH:
            opts = head_node.options
            head = BatchHead(opts["size"], opts["timeout_s"], head_op.stats, keyed_input)
        case OpKind.WINDOW:
            head = WindowHead(
                dict(head_node.options), head_op.stats, errors(head_op), dead_letters, keyed_input
            )
        case OpKind.COMAP:
            head = CoMapHead(
                call_of(head_op), head_op.stats, errors(head_op), keyed_input, head_op.state
            )
        case OpKind.JOIN:
            assert head_op.state is not None
            head = JoinHead(call_of(head_op), head_op.stats, errors(head_op), head_op.state)
        case OpKind.MAP | OpKind.FILTER | OpKind.FLATMAP | OpKind.KEYBY | OpKind.SINK:
            head = PassThroughHead([keyed and not head_keyed for keyed in keyed_input])
            pairs_input = head_keyed
            body_ops = list(zip(nodes, operators, strict=True))

    out_edges = plan.out_edges(chain.id)
    stages = [
        BodyStage(
            kind=node.kind,
            call=call_of(op),
            stats=op.stats,
            errors=errors(op),
            state=op.state,
            drain=op.function.obj.drain_collected
            if isinstance(op.function.obj, FlatMapFunction)
            else None,
        )
        for node, op in body_ops
    ]
    body = FusedBody(stages, pairs_input=pairs_input, emits=bool(out_edges)) if stages else None

    tail = nodes[-1]
    routers = [
        make_router(
            edge.partitioning,
            channels_of(edge.dst_chain),
            input_index=edge.input_index,
            src_index=task.index,
            keyby=(tail.name, task.index, tail.parallelism) if edge.keyed else None,
        )
        for edge in out_edges
    ]
    task_stats = TaskStats(task.id, task.index, [op.stats for op in operators])
    task_stats.queue = inbox
    return TaskLoop(
        task_id=task.id,
        head=head,
        body=body,
        routers=routers,
        inbox=inbox,
        expected_eos=task.expected_eos,
        operators=operators,
        control=control,
        stats=task_stats,
        sample_interval_s=config.metrics_sample_interval_s,
        max_delay_s=config.max_batch_delay_s,
        checkpoints=checkpoints,
        restore=restore,
        downstream=[t.id for e in out_edges for t in plan.tasks if t.chain_id == e.dst_chain],
        scheduling=task_fields,
    )
