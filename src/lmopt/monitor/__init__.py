"""Monitoring: the run registry (and, later, regression gates, drift and feedback)."""

from lmopt.monitor.registry import NullRegistry, Registry, default_url, machine_summary

__all__ = ["NullRegistry", "Registry", "default_url", "machine_summary"]
