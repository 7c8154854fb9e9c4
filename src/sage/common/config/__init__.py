"""Configuration: ports, network region hints, and settings from the environment / ``.env``."""
