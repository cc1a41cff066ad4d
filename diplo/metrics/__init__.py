"""Metrics: the collector of `diplo serve` (diplo/metrics/collector.py) and the Prometheus
exposition of its samples and of Diplo's own counters (diplo/metrics/prom.py)."""
