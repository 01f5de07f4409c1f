"""The read side: persistent, live, drift and history projections, rebuild, as-of queries."""

__all__ = ["model", "queries", "store"]
