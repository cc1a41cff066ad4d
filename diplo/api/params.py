"""Path and query parameters shared by the API's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from diplo.manifest.spec import APP_NAME

AppName = Annotated[str, Path(pattern=APP_NAME.pattern, max_length=63, description="App name")]
