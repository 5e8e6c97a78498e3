"""The one exception every gossip decoder and the SWIM core raise on bad input."""

from __future__ import annotations


class GossipError(ValueError):
    """Malformed, truncated, undecryptable or otherwise unacceptable gossip input."""
