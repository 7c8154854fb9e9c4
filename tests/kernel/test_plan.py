"""The compiler: plans are built and inspected without running anything."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sage.common.errors import PlanError
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.graph import OpKind, Partitioning, PhysicalPlan, compile_plan


def _edges(plan: PhysicalPlan) -> list[tuple[int, int, Partitioning]]:
    return [(e.src_chain, e.dst_chain, e.partitioning) for e in plan.edges]


def test_equal_parallelism_forward_edges_fuse_into_one_chain() -> None:
    env = LocalEnvironment("fuse")
    env.from_collection(range(3)).map(str).filter(bool).sink(print)
    plan = env.plan()
    assert len(plan.chains) == 1
    assert [plan.nodes[n].kind for n in plan.chains[0].node_ids] == [
        OpKind.SOURCE,
        OpKind.MAP,
        OpKind.FILTER,
        OpKind.SINK,
    ]
    assert plan.edges == ()
    assert [t.id for t in plan.tasks] == ["chain0#0"]


def test_parallelism_change_breaks_chain_with_round_robin_and_counts_eos() -> None:
    env = LocalEnvironment("rr")
    env.from_collection(range(3)).map(str, parallelism=3).sink(print, parallelism=2)
    plan = env.plan()
    assert [c.parallelism for c in plan.chains] == [1, 3, 2]
    assert _edges(plan) == [
        (0, 1, Partitioning.ROUND_ROBIN),
        (1, 2, Partitioning.ROUND_ROBIN),
    ]
    # every map instance hears from the single source; every sink from all 3 maps
    assert {t.id: t.expected_eos for t in plan.tasks} == {
        "chain0#0": 0,
        "chain1#0": 1,
        "chain1#1": 1,
        "chain1#2": 1,
        "chain2#0": 3,
        "chain2#1": 3,
    }


def test_keyby_makes_a_hash_edge_carrying_pairs_and_marks_the_next_operator_keyed() -> None:
    env = LocalEnvironment("keyed")
    env.from_collection(range(3)).keyby(lambda x: x % 2).map(str, parallelism=4).sink(print)
    plan = env.plan()
    hash_edges = [e for e in plan.edges if e.partitioning is Partitioning.HASH]
    assert len(hash_edges) == 1 and hash_edges[0].keyed
    keyby = next(n for n in plan.nodes if n.kind is OpKind.KEYBY)
    assert keyby.parallelism == 1  # inherits the upstream's, so it fuses with the source
    assert plan.chain_of(keyby.id) is plan.chains[0]
    mapped = next(n for n in plan.nodes if n.kind is OpKind.MAP)
    assert plan.keyed_nodes == {mapped.id}


def test_single_instance_keyed_edge_is_fused() -> None:
    env = LocalEnvironment("keyed1")
    env.from_collection(range(3)).keyby(lambda x: x).map(str).sink(print)
    assert len(env.plan().chains) == 1


def test_forward_edges_of_equal_parallelism_above_one_fuse() -> None:
    env = LocalEnvironment("wide")
    env.from_collection(range(3)).map(str, parallelism=2).map(len, parallelism=2).sink(print)
    plan = env.plan()
    assert [len(c.node_ids) for c in plan.chains] == [1, 2, 1]
    assert _edges(plan) == [
        (0, 1, Partitioning.ROUND_ROBIN),
        (1, 2, Partitioning.ROUND_ROBIN),
    ]


def test_chaining_can_be_disabled_giving_forward_channels() -> None:
    env = LocalEnvironment("nochain", config={"chaining": False})
    env.from_collection(range(3)).map(str, parallelism=2).map(len, parallelism=2).sink(print)
    plan = env.plan()
    assert len(plan.chains) == 4
    assert _edges(plan)[1] == (1, 2, Partitioning.FORWARD)
    assert [t.expected_eos for t in plan.tasks if t.chain_id == 2] == [1, 1]


def test_fan_out_ends_the_chain_and_feeds_both_consumers() -> None:
    env = LocalEnvironment("fanout")
    mapped = env.from_collection(range(3)).map(str)
    mapped.sink(print)
    mapped.sink(len)
    plan = env.plan()
    assert len(plan.chains) == 3
    assert {(e.src_chain, e.dst_chain) for e in plan.edges} == {(0, 1), (0, 2)}


def test_batch_broadcast_and_connect_heads() -> None:
    env = LocalEnvironment("heads")
    a = env.from_collection(range(3)).batch(2, 0.5)
    b = env.from_collection(range(3)).broadcast().map(str, parallelism=2)
    a.connect(b).map(str).sink(print)
    plan = env.plan()
    kinds = {plan.nodes[c.head].kind for c in plan.chains}
    assert OpKind.BATCH in kinds
    assert any(e.partitioning is Partitioning.BROADCAST for e in plan.edges)
    union = next(n for n in plan.nodes if len(n.inputs) == 2)
    assert sorted(e.input_index for e in plan.in_edges(plan.chain_of(union.id).id)) == [0, 1]


def test_explain_prints_chains_tasks_and_partitioning(capsys: pytest.CaptureFixture[str]) -> None:
    env = LocalEnvironment("explained")
    env.from_collection(range(3)).keyby(str).map(str, parallelism=2, name="Label").sink(print)
    text = env.explain()
    assert capsys.readouterr().out.strip() == text
    assert "3 chains, 4 tasks" in text
    assert "--hash--> chain 1" in text
    assert "map 'Label' parallelism=2 (keyed state)" in text


def test_plan_is_plain_data() -> None:
    env = LocalEnvironment("data")
    env.from_collection(range(3)).map(str, parallelism=2).sink(print)
    first, second = env.plan(), env.plan()
    assert first == second
    data = first.to_dict()
    assert data["tasks"] == ["chain0#0", "chain1#0", "chain1#1", "chain2#0"]
    assert [e["partitioning"] for e in data["edges"]] == ["round_robin", "round_robin"]


def test_a_pipeline_without_source_is_rejected() -> None:
    with pytest.raises(PlanError, match="no source"):
        compile_plan("empty", ())


ops = st.sampled_from(["map", "filter", "flatmap", "keyby", "batch"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(ops, st.integers(1, 4)), min_size=1, max_size=8),
    st.booleans(),
    st.booleans(),
)
def test_compiled_plans_satisfy_their_invariants(
    steps: list[tuple[str, int]], chaining: bool, fan_out: bool
) -> None:
    env = LocalEnvironment("prop", config={"chaining": chaining})
    stream = env.from_collection(range(5))
    for op, parallelism in steps:
        if op == "batch":
            stream = stream.batch(3, parallelism=parallelism)
        else:
            stream = getattr(stream, op)(lambda x: [x], parallelism=parallelism)
    stream.sink(print)
    if fan_out:
        stream.sink(len)
    plan = env.plan()
    assert plan == env.plan()  # deterministic
    # every operator is in exactly one chain
    placed = [n for c in plan.chains for n in c.node_ids]
    assert sorted(placed) == [n.id for n in plan.nodes]
    for chain in plan.chains:
        for up, down in zip(chain.node_ids, chain.node_ids[1:], strict=False):
            a, b = plan.nodes[up], plan.nodes[down]
            assert b.inputs == (a.id,)
            assert a.parallelism == b.parallelism == chain.parallelism
            assert b.kind not in (OpKind.SOURCE, OpKind.BATCH)
            assert a.kind is not OpKind.KEYBY or a.parallelism == 1
    for task in plan.tasks:
        expected = sum(
            1 if e.partitioning is Partitioning.FORWARD else plan.chains[e.src_chain].parallelism
            for e in plan.in_edges(task.chain_id)
        )
        assert task.expected_eos == expected
