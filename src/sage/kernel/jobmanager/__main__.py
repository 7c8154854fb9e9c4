"""``python -m sage.kernel.jobmanager``: the JobManager process (``sage jobmanager start``
runs it; see :func:`sage.kernel.jobmanager.daemon.main`)."""

from sage.kernel.jobmanager.daemon import main

main()
