"""The pipeline API: environments and streams (no threads or Ray are imported here)."""

from sage.kernel.api.base_environment import BaseEnvironment
from sage.kernel.api.connected_streams import ConnectedStreams
from sage.kernel.api.datastream import DataStream, KeyedStream
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.api.remote_environment import RemoteEnvironment

__all__ = [
    "BaseEnvironment",
    "ConnectedStreams",
    "DataStream",
    "KeyedStream",
    "LocalEnvironment",
    "RemoteEnvironment",
]
