"""The alert rules' shape, shared by the host's config (`alerts.rules`, every app's
defaults and the host-wide rules) and the manifest (an app's `alerts:`, which overrides
its own thresholds). Pure data: what a rule means is diplo/alerts/rules.py's."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from diplo.units import parse_duration, parse_size

ThresholdKind = Literal["percent", "bytes", "seconds"]
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class Threshold:
    kind: ThresholdKind
    value: float  # a percentage (80.0), bytes, or seconds

    def text(self) -> str:
        if self.kind == "percent":
            return f"{self.value:g}%"
        if self.kind == "bytes":
            return f"{int(self.value)} bytes"
        return f"{self.value * 1000:g}ms" if self.value < 1 else f"{self.value:g}s"


def parse_threshold(text: object, kinds: tuple[ThresholdKind, ...]) -> Threshold:
    """`80%`, a size (`400m`) or a duration (`500ms`), of the kinds a rule takes."""
    if isinstance(text, str) and (m := _PERCENT.match(text)):
        if "percent" in kinds:
            return Threshold("percent", float(m.group(1)))
    elif "bytes" in kinds:
        try:
            return Threshold("bytes", float(parse_size(text)))
        except ValueError:
            pass
    elif "seconds" in kinds:
        try:
            return Threshold("seconds", parse_duration(text))
        except ValueError:
            pass
    shown = {"percent": "a percentage like 80%", "bytes": "a size like 400m", "seconds": "a "
             "duration like 500ms"}  # fmt: skip
    raise ValueError(f"{text!r} is not {' or '.join(shown[k] for k in kinds)}")


def _off(value: Any) -> Any:
    """`memory: false` turns a rule off; `memory: true` keeps its defaults."""
    if isinstance(value, bool):
        return {"enabled": value}
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration, json_schema_input_type=str | float)]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    enabled: bool = Field(True, description="false turns the rule off.")


class _Above(_Rule):
    """Fires when the value stays above `above` for `for`."""

    KINDS: ClassVar[tuple[ThresholdKind, ...]] = ("percent",)
    above: str = "90%"
    for_: Seconds = Field(300.0, alias="for", ge=0, le=86400)

    @field_validator("above", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = f"{value}%" if "percent" in cls.KINDS else str(value)
        parse_threshold(value, cls.KINDS)
        return str(value)

    def threshold(self) -> Threshold:
        return parse_threshold(self.above, self.KINDS)


class MemoryRule(_Above):
    """Memory used, as a % of the app's limit (of the host's memory with no limit), or a
    size (e.g. 400m)."""

    KINDS: ClassVar[tuple[ThresholdKind, ...]] = ("percent", "bytes")
    above: str = Field("90%", description="e.g. 80% (of the limit) or 400m.")


class CpuRule(_Above):
    """CPU used, as a % of the app's limit (`resources.cpus`), or of one core with no limit."""

    above: str = Field("90%", description="e.g. 90% (of the limit, or of one core).")


class ErrorRateRule(_Above):
    """5xx answers / all answers of an app behind the proxy."""

    above: str = Field("5%", description="e.g. 5%.")


class LatencyRule(_Above):
    """The p99 response time of an app behind the proxy."""

    KINDS: ClassVar[tuple[ThresholdKind, ...]] = ("seconds",)
    above: str = Field("2s", description="e.g. 500ms.")


class DiskRule(_Above):
    """The disk holding Docker's data root, % used."""

    above: str = Field("90%", description="e.g. 90%.")


class DownRule(_Rule):
    """An app whose containers are crashed, missing or unhealthy for `for`."""

    for_: Seconds = Field(30.0, alias="for", ge=0, le=86400)


class CrashLoopRule(_Rule):
    """An app that restarted `restarts` times within `within`."""

    restarts: int = Field(3, ge=1, le=1000)
    within: Seconds = Field(600.0, ge=1, le=86400)


class SwitchRule(_Rule):
    """An event-driven rule: on or off."""


class StaleRule(_Rule):
    """A git source with no successful poll for `intervals` poll intervals."""

    intervals: int = Field(3, ge=1, le=1000)


class CertificateRule(_Rule):
    """A served certificate that expires within `within`."""

    within: Seconds = Field(14 * 86400.0, ge=3600, le=365 * 86400)


class AppAlerts(BaseModel):
    """An app's own rules (`alerts:` in the manifest); a key left out keeps the host's.
    Not part of the spec hash: changing it redeploys nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    down: Annotated[DownRule | None, BeforeValidator(_off)] = None
    crashloop: Annotated[CrashLoopRule | None, BeforeValidator(_off)] = None
    memory: Annotated[MemoryRule | None, BeforeValidator(_off)] = None
    cpu: Annotated[CpuRule | None, BeforeValidator(_off)] = None
    error_rate: Annotated[ErrorRateRule | None, BeforeValidator(_off)] = None
    latency: Annotated[LatencyRule | None, BeforeValidator(_off)] = None
    deploy: Annotated[SwitchRule | None, BeforeValidator(_off)] = None


class HostRules(BaseModel):
    """Every rule with its defaults (`alerts.rules` in $DIPLO_HOME/config.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    down: Annotated[DownRule, BeforeValidator(_off)] = Field(default_factory=DownRule)  # type: ignore[arg-type]
    crashloop: Annotated[CrashLoopRule, BeforeValidator(_off)] = Field(
        default_factory=CrashLoopRule  # type: ignore[arg-type]
    )
    memory: Annotated[MemoryRule, BeforeValidator(_off)] = Field(default_factory=MemoryRule)  # type: ignore[arg-type]
    cpu: Annotated[CpuRule, BeforeValidator(_off)] = Field(default_factory=CpuRule)  # type: ignore[arg-type]
    error_rate: Annotated[ErrorRateRule, BeforeValidator(_off)] = Field(
        default_factory=ErrorRateRule  # type: ignore[arg-type]
    )
    latency: Annotated[LatencyRule, BeforeValidator(_off)] = Field(default_factory=LatencyRule)  # type: ignore[arg-type]
    deploy: Annotated[SwitchRule, BeforeValidator(_off)] = Field(default_factory=SwitchRule)  # type: ignore[arg-type]
    conflict: Annotated[SwitchRule, BeforeValidator(_off)] = Field(default_factory=SwitchRule)  # type: ignore[arg-type]
    refused_commit: Annotated[SwitchRule, BeforeValidator(_off)] = Field(
        default_factory=SwitchRule  # type: ignore[arg-type]
    )
    source_stale: Annotated[StaleRule, BeforeValidator(_off)] = Field(default_factory=StaleRule)  # type: ignore[arg-type]
    certificate: Annotated[CertificateRule, BeforeValidator(_off)] = Field(
        default_factory=CertificateRule  # type: ignore[arg-type]
    )
    disk: Annotated[DiskRule, BeforeValidator(_off)] = Field(default_factory=DiskRule)  # type: ignore[arg-type]

    def for_app(self, own: AppAlerts | None) -> HostRules:
        """These rules with an app's own settings over them, key by key."""
        if own is None:
            return self
        update: dict[str, Any] = {}
        for name in AppAlerts.model_fields:
            mine = getattr(own, name)
            if mine is not None:
                base = getattr(self, name)
                update[name] = base.model_copy(update=mine.model_dump(exclude_unset=True))
        return self.model_copy(update=update)


def app_alerts(text: str) -> AppAlerts | None:
    """An app's rules as DesiredApp.alerts keeps them (JSON; "" for none)."""
    return AppAlerts.model_validate_json(text) if text else None
