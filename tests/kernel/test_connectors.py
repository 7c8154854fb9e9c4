"""Never-ending sources in running jobs: a folder's files as they are added, changed and
deleted, a JSON-lines file as it grows and rotates, records POSTed over HTTP; and each one's
checkpointed position carrying it across a restart."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sage.common.config.ports import SagePorts
from sage.common.core.functions.sink_function import SinkFunction
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.connectors import (
    ConnectorSource,
    FileEvent,
    FolderSource,
    HttpIngestSource,
    JsonLinesSource,
    LineReader,
)

WAIT_S = 20.0


class Seen:
    """What a job's sink received, and a way to wait until it holds something."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.items: list[Any] = []
        self.cond = threading.Condition()
        self.release = threading.Event()  # a sink that holds records waits for this
        self.release.set()

    def add(self, item: Any) -> None:
        self.release.wait(WAIT_S)
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], bool]) -> list[Any]:
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self.items), WAIT_S)
            assert ok, f"timed out; seen so far: {self.items[-10:]!r}"
            return list(self.items)


SEEN: dict[str, Seen] = {}


class Keep(SinkFunction):
    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name

    def execute(self, record: Any) -> None:
        SEEN[self.name].add(record)


@pytest.fixture
def seen(request: pytest.FixtureRequest) -> Iterator[Seen]:
    name = request.node.name
    SEEN[name] = Seen(name)
    yield SEEN[name]
    del SEEN[name]


def events_of(items: list[Any]) -> list[tuple[str, str, str | None]]:
    return [(e.kind, e.path, e.text) for e in items]


def write(path: Path, text: str) -> None:
    """Write atomically: a temporary file beside the folder, renamed into it."""
    tmp = path.parent.parent / f".{path.name}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- the folder ------------------------------------------------------------------------------


@pytest.mark.parametrize("polling", [None, True], ids=["inotify", "polling"])
def test_a_folder_source_scans_then_follows_adds_changes_and_deletes(
    tmp_path: Path, seen: Seen, polling: bool | None
) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("beta", encoding="utf-8")
    (folder / ".hidden").write_text("skip me", encoding="utf-8")
    env = LocalEnvironment("folder")
    env.from_source(FolderSource, folder, polling=polling).sink(Keep, seen.name)
    env.submit(autostop=False)
    try:
        got = seen.wait_for(lambda items: len(items) >= 2)
        assert sorted(events_of(got)) == [
            ("added", "a.txt", "alpha"),
            ("added", "sub/b.txt", "beta"),
        ]
        write(folder / "a.txt", "alpha 2")
        seen.wait_for(lambda items: len(items) >= 3)
        write(folder / "c.txt", "gamma")
        seen.wait_for(lambda items: len(items) >= 4)
        (folder / "sub" / "b.txt").unlink()
        got = seen.wait_for(lambda items: len(items) >= 5)
        assert events_of(got[2:]) == [
            ("changed", "a.txt", "alpha 2"),
            ("added", "c.txt", "gamma"),
            ("deleted", "sub/b.txt", None),
        ]
        versions = [e.version for e in got]
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
    finally:
        env.stop(WAIT_S)


def test_a_folder_source_resumes_from_its_position_with_what_changed_meanwhile(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in "abc":
        (folder / f"{name}.txt").write_text(name, encoding="utf-8")
    first = FolderSource(folder)
    first.connect(None)
    try:
        assert sorted(e.path for e in first.poll(1.0)) == ["a.txt", "b.txt", "c.txt"]
        position = first.get_state(1)
    finally:
        first.disconnect()
    (folder / "a.txt").write_text("a, edited", encoding="utf-8")
    (folder / "b.txt").unlink()
    (folder / "d.txt").write_text("d", encoding="utf-8")
    second = FolderSource(folder)
    second.restore_state(position)
    second.connect(second._resume_from)
    try:
        events = second.poll(1.0)
    finally:
        second.disconnect()
    assert sorted(events_of(events)) == [
        ("added", "d.txt", "d"),
        ("changed", "a.txt", "a, edited"),
        ("deleted", "b.txt", None),
    ]
    assert min(e.version for e in events) > position["position"]["clock"]


# -- a JSON-lines file ----------------------------------------------------------------------


def test_a_line_reader_waits_for_whole_lines_and_follows_rotation_and_truncation(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.jsonl"
    log.write_bytes(b'{"n": 1}\n{"n": 2}\n{"n": ')
    reader = LineReader(log)
    reader.open(None)
    assert reader.read(100) == [{"n": 1}, {"n": 2}]
    assert reader.read(100) == []  # the third line is not complete yet
    with log.open("ab") as fh:
        fh.write(b'3}\n{"n": 4}')  # the last line of the file before rotation: no newline
    assert reader.read(100) == [{"n": 3}]
    saved = reader.position()
    log.rename(tmp_path / "app.jsonl.1")
    log.write_bytes(b'{"n": 5}\n')
    assert reader.read(100) == [{"n": 4}, {"n": 5}]
    # a restart from the position saved before the rotation reads the rest of the rotated
    # file, then the new one
    again = LineReader(log)
    again.open(saved)
    assert again.read(100) + again.read(100) == [{"n": 4}, {"n": 5}]
    with log.open("r+b") as fh:  # truncated in place (copytruncate): read again from 0
        fh.truncate(0)
    assert reader.read(100) == []
    with log.open("ab") as fh:
        fh.write(b'{"n": 6}\n{"n": 7}\n')
    assert reader.read(100) == [{"n": 6}, {"n": 7}]


def test_a_malformed_line_names_the_file_and_offset_or_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "bad.jsonl"
    log.write_bytes(b'{"ok": 1}\nnot json\n{"ok": 2}\n')
    strict = LineReader(log)
    strict.open(None)
    with pytest.raises(ValueError, match=r"bad\.jsonl: the line at byte 10 is not JSON.*on_error"):
        strict.read(100)
    lenient = LineReader(log, on_error="skip")
    lenient.open(None)
    assert lenient.read(100) == [{"ok": 1}, {"ok": 2}] and lenient.skipped == 1


def test_a_json_lines_source_follows_appends_in_a_running_job(tmp_path: Path, seen: Seen) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text('{"i": 0}\n', encoding="utf-8")
    env = LocalEnvironment("tail")
    env.from_source(JsonLinesSource, log).sink(Keep, seen.name)
    env.submit(autostop=False)
    try:
        seen.wait_for(lambda items: len(items) >= 1)
        with log.open("a", encoding="utf-8") as fh:
            for i in range(1, 50):
                fh.write(f'{{"i": {i}}}\n')
        got = seen.wait_for(lambda items: len(items) >= 50)
        assert [r["i"] for r in got] == list(range(50))
    finally:
        env.stop(WAIT_S)


# -- HTTP ingest ----------------------------------------------------------------------------


def test_http_ingest_takes_records_with_its_token_and_refuses_the_rest(
    tmp_path: Path, seen: Seen
) -> None:
    port = SagePorts.any_free_port()
    listening = threading.Event()
    env = LocalEnvironment("ingest")
    env.from_source(
        HttpIngestSource,
        port,
        token="s3cret",
        journal=tmp_path / "j.jsonl",
        max_backlog=3,
        on_listen=lambda url: listening.set(),
    ).sink(Keep, seen.name)
    seen.release.clear()  # the sink holds the first record: the backlog builds up
    env.submit(autostop=False)
    url = f"http://127.0.0.1:{port}/v1/ingest"
    auth = {"authorization": "Bearer s3cret"}
    try:
        with httpx.Client(timeout=WAIT_S) as client:
            assert listening.wait(WAIT_S)
            health = client.get(f"http://127.0.0.1:{port}/v1/health").json()
            assert health == {"status": "ok", "backlog": 0}
            assert client.post(url, json={"q": 1}).status_code == 401
            assert (
                client.post(url, json={"q": 1}, headers={"authorization": "Bearer x"}).status_code
                == 401
            )
            bad = client.post(url, content=b"{nope", headers=auth)
            assert bad.status_code == 400 and "not JSON" in bad.json()["error"]["message"]
            assert client.post(url, json={"q": 1}, headers=auth).json() == {"accepted": 1}
            assert client.post(url, json=[{"q": 2}, {"q": 3}], headers=auth).json() == {
                "accepted": 2
            }
            full = client.post(url, json=[{"q": 4}, {"q": 5}, {"q": 6}, {"q": 7}], headers=auth)
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            assert full.json()["error"]["type"] == "rate_limit_exceeded"
            seen.release.set()
            got = seen.wait_for(lambda items: len(items) >= 3)
            assert got == [{"q": 1}, {"q": 2}, {"q": 3}]
            assert client.post(url, json={"q": 8}, headers=auth).json() == {"accepted": 1}
            assert seen.wait_for(lambda items: len(items) >= 4)[-1] == {"q": 8}
    finally:
        seen.release.set()
        env.stop(WAIT_S)


# -- a connector of one's own, exactly once across a restart -----------------------------------


class Counter(ConnectorSource):
    """``0 .. n-1`` in polls of 7, its position the next number."""

    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = n
        self.next = 0
        self.committed: list[int] = []

    def connect(self, position: Any) -> None:
        self.next = position or 0

    def poll(self, timeout: float) -> list[int]:
        records = list(range(self.next, min(self.next + 7, self.n)))
        self.next += len(records)
        return records

    def position(self) -> int:
        return self.next

    def finished(self) -> bool:
        return self.next >= self.n

    def commit(self, position: Any) -> None:
        self.committed.append(position)


def test_a_connector_hands_out_records_once_and_saves_the_ones_polled_but_not_yet_out() -> None:
    source = Counter(20)
    source.connect(None)
    first = [source.execute() for _ in range(3)]
    state = source.get_state(5)
    assert first == [0, 1, 2] and state == {"position": 7, "records": [3, 4, 5, 6]}
    source.notify_checkpoint_complete(5)
    assert source.committed == [7]
    restored = Counter(20)
    restored.restore_state(state)
    restored.open(None)
    rest = []
    while (record := restored.execute()) is not None and not hasattr(record, "reason"):
        rest.append(record)
    assert first + rest == list(range(20))


def test_events_are_plain_picklable_records() -> None:
    import pickle

    event = FileEvent("added", "a.txt", "alpha", 1, 0.0, "d")
    assert pickle.loads(pickle.dumps(event)) == event
