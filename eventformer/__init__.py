"""eventformer: event-driven inference for spiking vision transformers on CPUs."""

__version__ = "0.1.0"
