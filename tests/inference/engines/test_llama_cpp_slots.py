"""Which slot of the KV cache a prompt goes to: the prefix cache's choices, without a model."""

from __future__ import annotations

from sage.inference.engines.llamacpp.slots import SlotTable, common_prefix


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def test_a_prompt_goes_to_the_idle_slot_holding_most_of_it() -> None:
    table = SlotTable(3)
    table.slots[0].tokens = [9, 9, 9]
    table.slots[1].tokens = [1, 2, 3, 4]
    table.slots[2].tokens = [1, 2]
    placed = table.place([1, 2, 3, 4, 5, 6])
    assert placed is not None
    assert (placed.slot.seq, placed.source, placed.reused) == (1, None, 4)
    assert placed.slot.busy


def test_the_whole_prompt_cached_still_feeds_its_last_token() -> None:
    table = SlotTable(1)
    table.slots[0].tokens = [1, 2, 3]
    placed = table.place([1, 2, 3])
    assert placed is not None and placed.reused == 2  # the last token's logits are needed


def test_a_longer_prefix_in_a_busy_slot_is_copied_into_the_least_valuable_idle_one() -> None:
    table = SlotTable(3)
    busy = table.place([5, 6, 7])
    assert busy is not None
    busy.slot.tokens = [1, 2, 3, 4, 5]  # what it holds by now
    table.slots[1].tokens, table.slots[1].used = [1, 9], 10  # a short match, used lately
    table.slots[2].tokens, table.slots[2].used = [7, 7], 5  # nothing to lose
    placed = table.place([1, 2, 3, 4, 8])
    assert placed is not None
    assert (placed.slot.seq, placed.source, placed.reused) == (2, busy.slot, 4)


def test_no_idle_slot_means_wait_and_a_new_prompt_overwrites_the_least_recent() -> None:
    table = SlotTable(2)
    first, second = table.place([1]), table.place([2])
    assert first is not None and second is not None and table.place([3]) is None
    first.slot.tokens, second.slot.tokens = [1], [2]
    second.slot.busy = first.slot.busy = False
    placed = table.place([3])
    assert placed is not None and placed.slot is first.slot and placed.reused == 0
