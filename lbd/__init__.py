"""lbd: a bare-metal load-balancer daemon."""

__version__ = "0.1.0"
