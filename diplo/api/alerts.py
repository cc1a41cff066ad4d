"""GET /alerts: what fires, what fired lately, and how each channel is doing."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from diplo.alerts.service import AlertService
from diplo.api.problems import AUTH_ERRORS


class Delivery(BaseModel):
    state: Literal["firing", "resolved"] = Field(description="The change this delivery told.")
    status: Literal["queued", "sent", "retrying", "failed"]
    attempts: int | None = None
    at: float | None = Field(None, description="Epoch seconds of the last attempt.")
    error: str | None = Field(None, description="Why the last attempt failed (URLs masked).")


class AlertView(BaseModel):
    key: str = Field(description="rule:subject, e.g. memory:web.")
    rule: str
    subject: str = Field(description="An app, a domain, a source or Docker's data root.")
    app: str | None
    state: Literal["firing", "resolved"]
    since: float = Field(description="When the condition began, epoch seconds.")
    resolved_at: float | None
    value: str | None = Field(description="The last value measured, e.g. 61.0%.")
    threshold: str | None
    message: str
    deliveries: dict[str, Delivery] = Field(description="Per channel name.")


class ChannelView(BaseModel):
    name: str
    type: str
    target: str = Field(description="Where it goes, masked: a URL's scheme and host only.")
    sent: int
    failed: int = Field(description="Attempts that failed.")
    dropped: int = Field(description="Notifications given up on after every retry.")
    queued: int
    last_ok_at: float | None
    last_error: str | None
    last_error_at: float | None


class AlertsAnswer(BaseModel):
    enabled: bool
    firing: list[AlertView]
    resolved: list[AlertView] = Field(description="The newest first.")
    channels: list[ChannelView]


def add_alert_routes(api: FastAPI, alerts: AlertService | None, reads: Any) -> None:
    @api.get(
        "/alerts",
        summary="Alerts firing and recently resolved, with each channel's delivery status",
        dependencies=reads,
        response_model=AlertsAnswer,
        responses=AUTH_ERRORS,
    )
    def list_alerts() -> dict[str, Any]:
        if alerts is None:
            return {"enabled": False, "firing": [], "resolved": [], "channels": []}
        return {"enabled": True, **alerts.snapshot()}
