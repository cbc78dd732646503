"""olmorun's operator side: the OlmoRun API, planner, launcher, archive and CLI. Imports no torch."""

__version__ = "0.1.0"
