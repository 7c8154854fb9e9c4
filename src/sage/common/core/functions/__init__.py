"""Base classes for user functions, one module each at the paths the seeds import.

Every operator also accepts a plain callable (``lambda``) instead of a function class.
"""

from sage.common.core.functions.base_function import BaseFunction
from sage.common.core.functions.batch_function import BatchFunction
from sage.common.core.functions.comap_function import BaseCoMapFunction, CoMapFunction
from sage.common.core.functions.filter_function import FilterFunction
from sage.common.core.functions.flatmap_function import FlatMapFunction
from sage.common.core.functions.join_function import BaseJoinFunction, JoinFunction
from sage.common.core.functions.keyby_function import KeyByFunction
from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.sink_function import SinkFunction
from sage.common.core.functions.source_function import SourceFunction, StopSignal

__all__ = [
    "BaseCoMapFunction",
    "BaseFunction",
    "BaseJoinFunction",
    "BatchFunction",
    "CoMapFunction",
    "FilterFunction",
    "FlatMapFunction",
    "JoinFunction",
    "KeyByFunction",
    "MapFunction",
    "SinkFunction",
    "SourceFunction",
    "StopSignal",
]
