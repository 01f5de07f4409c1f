"""Storage backends of the log: each implements `eventstore.log.EventLog`."""

__all__ = ["sqlite"]
