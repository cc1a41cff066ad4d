"""The API of `diplo serve` over the in-memory engine, for the API tests: a manifest
folder in a temp dir with two apps (one with a secret env value), reconciled by calling
the controller directly (no threads), and a real SQLite ledger under DIPLO_HOME. Its
access is one of two: LOOPBACK (no token chosen: reads open, POSTs need the admin token)
or TOKENS (DIPLO_TOKEN and DIPLO_VIEWER_TOKEN chosen: every read needs one of them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient

from diplo.api.access import Access
from diplo.api.app import asgi_app
from diplo.controller.controller import Controller
from diplo.ledger import Ledger
from diplo.model import LABEL_APP
from diplo.ops.context import Context
from diplo.runtime.memory import MemoryRuntime

from .factories import IMAGE_ID

TOKEN = "t0ken-for-the-api-tests-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VIEWER_TOKEN = "t0ken-for-the-api-tests-viewer"
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
HOST = "localhost"  # a Host name the API answers to (others get 421)


def loopback() -> Access:
    return Access(TOKEN, open_reads=True)


def tokens() -> Access:
    return Access(TOKEN, VIEWER_TOKEN)


ACCESS = {"loopback": loopback, "tokens": tokens}
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
    access: Access

    def client(self, host: str = "testclient", headers: dict[str, str] | None = None) -> TestClient:
        """A client at address `host`, sending `headers` with every request."""
        return TestClient(
            self.api, base_url=f"http://{HOST}", client=(host, 50000), headers=headers
        )

    @property
    def read_headers(self) -> dict[str, str]:
        """What a viewer sends: nothing on loopback without a token, else the viewer token."""
        return {} if self.access.open_reads else VIEWER

    def write(self, apps: dict[str, Any]) -> None:
        """Change the manifest and load it, as the controller's file watcher would."""
        (self.folder / "diplo.yaml").write_text(yaml.safe_dump({"project": "shop", "apps": apps}))
        self.controller.reload()

    def container(self, app: str) -> Any:
        return next(c for c in self.engine.containers.values() if c.spec.labels[LABEL_APP] == app)


def build_world(root: Path, access: Access | None = None) -> World:
    """DIPLO_HOME must already point to `root / "home"` (the host locks live there)."""
    access = access or loopback()
    folder = root / "manifests"
    folder.mkdir(parents=True)
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID})
    ledger = Ledger(root / "home" / "ledger.db")
    controller = Controller(folder, Context(_runtime=engine, _ledger=ledger))
    api = asgi_app(controller, access)
    world = World(folder, engine, ledger, controller, api, access)
    world.write(app_specs())
    for name in APPS:
        controller.handle(name)
    return world
