"""Adapters to container engines. `base` holds the interface; `docker_engine` is the only
module in Diplo that imports the Docker SDK; `memory` is an in-memory engine for tests."""
