"""``python -m sage.kernel.jobmanager``: the JobManager process (``sage jobmanager start``
runs it; see :func:`sage.kernel.jobmanager.server.main`)."""

from sage.kernel.jobmanager.server import main

main()
