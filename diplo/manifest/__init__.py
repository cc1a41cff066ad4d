"""Manifest files: loading, validation, interpolation and resolution."""
