"""momento-pipeline: durable, ordered, observable event processing for Momento Topics."""

__version__ = "0.1.0"
