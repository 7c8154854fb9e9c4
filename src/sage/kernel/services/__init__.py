"""Services in the dataflow: registry, sync and async calls, replicas, fallback, metrics."""

from sage.kernel.services.base_service import BaseService, ServiceContext
from sage.kernel.services.metrics import ServiceMetrics
from sage.kernel.services.registry import ServiceRegistry
from sage.kernel.services.spec import ServiceSpec

__all__ = ["BaseService", "ServiceContext", "ServiceMetrics", "ServiceRegistry", "ServiceSpec"]
