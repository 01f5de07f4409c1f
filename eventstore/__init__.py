"""The write side: catalogue, events, codec, decisions, the log and its backends."""

__all__ = ["catalogue", "codec", "decisions", "errors", "events", "hypervisor", "log", "state"]
