"""olmorun's trainer: the OLMo 2 model, data pipeline, training loop and checkpoints (torch)."""

__version__ = "0.1.0"
