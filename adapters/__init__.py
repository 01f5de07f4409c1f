"""Hypervisors behind one port: the simulated one and, later, libvirt."""

__all__ = ["port", "simulated"]
