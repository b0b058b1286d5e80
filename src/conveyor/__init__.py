"""Conveyor: a self-hosted job service for GPU work."""

__version__ = "0.1.0"
