"""Demo pipelines shipped with SAGE (run by ``sage demo``)."""
