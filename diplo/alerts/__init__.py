"""Alerts of `diplo serve`: rules over the metrics, the health view, the controller's
events and the sources (rules.py), each alert's state (state.py), and the channels that
notify people (channels.py), fed by a worker off the reconcile path (delivery.py)."""
