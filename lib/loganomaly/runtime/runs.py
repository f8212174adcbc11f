"""Run ids and run dates shared by every stage."""

from __future__ import annotations

import datetime as dt
import uuid

from loganomaly.errors import StageInputError


def new_run_id(stage: str) -> str:
    """A sortable, unique id for one run of a stage (UTC time + random suffix)."""
    return f"{stage}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def resolve_date(date: str | None) -> str | None:
    """``today``/``yesterday`` (UTC) to ISO; an ISO date is checked; None stays None."""
    if date is None:
        return None
    today = dt.datetime.now(dt.timezone.utc).date()
    if date == "today":
        return today.isoformat()
    if date == "yesterday":
        return (today - dt.timedelta(days=1)).isoformat()
    try:
        return dt.date.fromisoformat(date).isoformat()
    except ValueError:
        raise StageInputError(f"date {date!r} is not YYYY-MM-DD, today or yesterday") from None

