"""The API of `diplo serve` over the in-memory engine, for the API tests: a manifest
folder in a temp dir with two apps (one with a secret env value), reconciled by calling
the controller directly (no threads), and a real SQLite ledger under DIPLO_HOME."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient

from diplo.api.app import asgi_app
from diplo.controller.controller import Controller
from diplo.ledger import Ledger
from diplo.model import LABEL_APP
from diplo.ops.context import Context
from diplo.runtime.memory import MemoryRuntime

from .factories import IMAGE_ID

TOKEN = "t0ken-for-the-api-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "s3cr3t-value-123"
APPS = ("web", "worker")


def app_specs() -> dict[str, Any]:
    return {
        "web": {
            "image": "busybox:latest",
            "ports": ["8080"],
            "env": {"API_KEY": SECRET, "MODE": "prod"},
            "health": {"start_period": "0s"},
        },
        "worker": {"image": "busybox:latest", "health": {"start_period": "0s"}},
    }


@dataclass
class World:
    folder: Path
    engine: MemoryRuntime
    ledger: Ledger
    controller: Controller
    api: Any  # the ASGI app `diplo serve` runs

    def client(self, host: str = "testclient") -> TestClient:
        return TestClient(self.api, client=(host, 50000))

    def write(self, apps: dict[str, Any]) -> None:
        """Change the manifest and load it, as the controller's file watcher would."""
        (self.folder / "diplo.yaml").write_text(yaml.safe_dump({"project": "shop", "apps": apps}))
        self.controller.reload()

    def container(self, app: str) -> Any:
        return next(c for c in self.engine.containers.values() if c.spec.labels[LABEL_APP] == app)


def build_world(root: Path) -> World:
    """DIPLO_HOME must already point to `root / "home"` (the host locks live there)."""
    folder = root / "manifests"
    folder.mkdir(parents=True)
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID})
    ledger = Ledger(root / "home" / "ledger.db")
    controller = Controller(folder, Context(_runtime=engine, _ledger=ledger))
    world = World(folder, engine, ledger, controller, asgi_app(controller, TOKEN))
    world.write(app_specs())
    for name in APPS:
        controller.handle(name)
    return world
