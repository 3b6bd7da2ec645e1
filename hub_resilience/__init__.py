"""hub-resilience: keep a JupyterHub on Kubernetes standing under a launch spike."""

__version__ = "0.1.0"
