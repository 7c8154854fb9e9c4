"""The bounded buffers collected records and printed lines leave a task through."""

from __future__ import annotations

import threading

import pytest

from sage.kernel.runtime.channel import Cancelled
from sage.kernel.runtime.collect import CollectBuffers, unpack
from sage.kernel.runtime.handover import Handover


def test_take_returns_what_was_put_in_order_by_buffer() -> None:
    hub = Handover(capacity=10)
    a, b = hub.buffer("a"), hub.buffer("b")
    for i in range(3):
        a.put(i)
    b.put("x")
    assert hub.take(100, timeout=0) == [("a", [0, 1, 2]), ("b", ["x"])]
    assert hub.take(100, timeout=0) == []  # nothing new: [] after the timeout


def test_take_stops_at_max_items() -> None:
    hub = Handover(capacity=10)
    a = hub.buffer("a")
    for i in range(5):
        a.put(i)
    assert hub.take(2, timeout=0) == [("a", [0, 1])]
    assert hub.take(10, timeout=0) == [("a", [2, 3, 4])]


def test_take_ends_with_none_once_every_buffer_closed_and_drained() -> None:
    hub = Handover(capacity=10)
    a, b = hub.buffer("a"), hub.buffer("b")
    a.put(1)
    a.close()
    assert hub.take(10, timeout=0) == [("a", [1])]
    assert hub.take(10, timeout=0) == []  # b may still write
    b.close()
    assert hub.take(10, timeout=0) is None
    assert hub.ended
    assert Handover(capacity=1).take(1) is None  # no buffers: nothing will ever come


def test_a_full_buffer_holds_its_writer_until_the_fetcher_takes() -> None:
    hub = Handover(capacity=2)
    buffer = hub.buffer("a")
    buffer.put(1)
    buffer.put(2)
    wrote_third = threading.Event()

    def writer() -> None:
        buffer.put(3)  # full: waits
        wrote_third.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert not wrote_third.wait(0.05)  # still waiting: backpressure
    assert hub.take(10, timeout=5) == [("a", [1, 2])]
    assert wrote_third.wait(5)
    thread.join(5)
    assert hub.take(10, timeout=5) == [("a", [3])]


def test_take_wakes_as_soon_as_a_writer_puts() -> None:
    hub = Handover(capacity=4)
    buffer = hub.buffer("a")
    taken: list[object] = []
    thread = threading.Thread(target=lambda: taken.append(hub.take(10, timeout=30)))
    thread.start()
    buffer.put("now")
    thread.join(30)
    assert taken == [[("a", ["now"])]]


def test_close_with_drain_waits_for_the_last_item_to_be_taken() -> None:
    hub = Handover(capacity=4)
    buffer = hub.buffer("a", drain_on_close=True)
    buffer.put(1)
    closed = threading.Event()
    thread = threading.Thread(target=lambda: (buffer.close(), closed.set()))
    thread.start()
    assert not closed.wait(0.05)  # the item is still here
    assert hub.take(10, timeout=5) == [("a", [1])]
    assert closed.wait(5)
    thread.join(5)
    assert hub.take(10, timeout=0) is None


def test_cancel_wakes_writers_closers_and_the_fetcher() -> None:
    hub = Handover(capacity=1)
    full = hub.buffer("full")
    full.put(1)
    draining = hub.buffer("draining", drain_on_close=True)
    draining.put(1)  # its closer will wait for the drain
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            full.put(2)
        except Cancelled as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=draining.close)]
    for thread in threads:
        thread.start()
    hub.cancel()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    assert len(errors) == 1
    assert hub.take(10) is None
    with pytest.raises(Cancelled):
        full.put(3)


def test_collect_buffers_hand_over_pickled_chunks() -> None:
    buffers = CollectBuffers(capacity=100)
    target = buffers("c0")
    for record in [(1, "a"), {"k": [2]}, None]:
        target.put(record)
    chunks = buffers.take(10, timeout=0)
    assert chunks is not None and len(chunks) == 1
    assert (chunks[0].collector, chunks[0].count) == ("c0", 3)
    assert unpack(chunks[0].payload) == [(1, "a"), {"k": [2]}, None]
