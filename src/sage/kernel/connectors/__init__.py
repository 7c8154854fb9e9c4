"""Sources that never end, each with checkpointed offsets (exactly once with the job's
checkpoints): a folder's files as they are added, changed and deleted, a JSON-lines file as
it grows, records POSTed over HTTP, and :class:`ConnectorSource`, the small interface to
write another (a Kafka consumer is a few dozen lines on it)."""

from sage.kernel.connectors.base import ConnectorSource
from sage.kernel.connectors.folder import ADDED, CHANGED, DELETED, FileEvent, FolderSource
from sage.kernel.connectors.http_ingest import HttpIngestSource
from sage.kernel.connectors.jsonl import JsonLinesSource, LineReader
from sage.kernel.connectors.watch import DirectoryWatcher, WatcherError

__all__ = [
    "ADDED",
    "CHANGED",
    "DELETED",
    "ConnectorSource",
    "DirectoryWatcher",
    "FileEvent",
    "FolderSource",
    "HttpIngestSource",
    "JsonLinesSource",
    "LineReader",
    "WatcherError",
]
