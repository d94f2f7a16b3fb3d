"""dse: design-space exploration of approximate multipliers in deep neural networks."""

__version__ = "0.1.0"
