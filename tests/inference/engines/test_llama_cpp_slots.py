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


def test_a_longer_prefix_in_a_busy_slot_is_copied_into_the_least_recently_used_idle_one() -> None:
    table = SlotTable(3)
    busy = table.place([5, 6, 7])
    assert busy is not None
    prefix = list(range(1, 41))
    busy.slot.tokens = [*prefix, 5]  # what it holds by now
    table.slots[1].tokens, table.slots[1].used = [1, *[9] * 20], 10  # a short match, used lately
    table.slots[2].tokens, table.slots[2].used = [7, 7], 5  # used least recently
    placed = table.place([*prefix, 8])
    assert placed is not None
    assert (placed.slot.seq, placed.source, placed.reused) == (2, busy.slot, 40)
    # a copy that would save fewer than MIN_COPY tokens is not worth moving a whole part
    placed.slot.busy = False
    short = table.place([1, 2, 3, 99])
    assert short is not None and short.source is None


def test_no_idle_slot_means_wait_and_a_new_prompt_overwrites_the_least_recent() -> None:
    table = SlotTable(2)
    first, second = table.place([1]), table.place([2])
    assert first is not None and second is not None and table.place([3]) is None
    first.slot.tokens, second.slot.tokens = [1], [2]
    second.slot.busy = first.slot.busy = False
    placed = table.place([3])
    assert placed is not None and placed.slot is first.slot and placed.reused == 0


def test_a_short_shared_header_does_not_overwrite_another_prompt_s_cache() -> None:
    header = [1, 2]  # e.g. the chat template's first tokens, the same for every prompt
    a, b = [*header, *range(100, 140)], [*header, *range(200, 240)]
    table = SlotTable(3)
    table.slots[0].tokens, table.slots[0].used = [*a, 7], 1
    table.slots[1].tokens, table.slots[1].used = [*b, 8], 2
    placed = table.place([*header, *range(300, 340)])  # a third prompt: the empty slot
    assert placed is not None and (placed.slot.seq, placed.source, placed.reused) == (2, None, 0)
    placed.slot.tokens, placed.slot.busy = [*header, *range(300, 340)], False
    again = table.place([*a, 5])  # a's own slot, its whole prefix reused
    assert again is not None and (again.slot.seq, again.source, again.reused) == (0, None, 42)
