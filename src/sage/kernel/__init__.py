"""The dataflow kernel: pipeline API (``api``), compiler (``graph``), runtimes (``runtime``)."""
