"""The front of `diplo serve`: a process of its own that owns the listening port (and its
TLS), answers `GET /apps` from the body the controller publishes, and relays every other
request, WebSockets included, to the controller's server on a private UNIX socket.

Why a second process: the controller's threads (health ticks, probes, resyncs, metrics)
share the GIL with the API's event loop, and every burst of theirs stalled the requests
in flight (`GET /apps` p99 1.7x a bare uvicorn's at 100 apps, 2.5x at 500). The front
runs none of that: the busiest read waits for nothing but its own loop."""
