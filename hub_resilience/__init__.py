"""hub-resilience: keep a JupyterHub on Kubernetes standing under a launch spike."""

__version__ = "0.1.0"

# configure() is the one call operators make (see hub_resilience/configure.py); the module
# it lives in imports only the standard library and hub_resilience.hub.activity at import time.
from hub_resilience.configure import configure  # noqa: E402

__all__ = ["__version__", "configure"]
