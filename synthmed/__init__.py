"""synthmed: synthetic medical images, batch export with provenance, and honest evaluation."""

__version__ = "0.1.0"
