"""pswd-gateway: Power Source to Workload Dynamics gateway."""

__all__ = ["__version__"]
__version__ = "0.1.0"
