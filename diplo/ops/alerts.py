"""The alerts as the ledger keeps them: what `diplo alerts` shows when no `diplo serve`
runs (the last one's firing and resolved alerts; no channel is live then)."""

from __future__ import annotations

import json
from typing import Any

from diplo.ops.context import Context


def local_alerts(ctx: Context, resolved: int = 50) -> dict[str, Any]:
    firing: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    for row in ctx.ledger.alerts(resolved):
        if row["state"] == "pending":
            continue
        alert = {
            k: row[k]
            for k in (
                *("key", "rule", "subject", "app", "state", "since", "resolved_at"),
                *("value", "threshold", "message"),
            )
        }
        alert["deliveries"] = json.loads(row["deliveries_json"] or "{}")
        (firing if row["state"] == "firing" else done).append(alert)
    return {"enabled": True, "firing": firing, "resolved": done, "channels": []}
