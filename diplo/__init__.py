"""Diplo: a GitOps reconciler for plain Docker."""

__version__ = "0.1.0"
