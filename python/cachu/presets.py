"""Bundles of decorator options for common patterns (cachu 0.6's presets).

A preset returns keyword arguments for ``@cache(...)``::

    @cache(tag="filings", **today_aware(date_param="date", today_ttl=900, past_ttl=86400))
    def get_filings_for_date(date): ...
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

__all__ = ["today_aware"]


def today_aware(
    *,
    date_param: str,
    today_ttl: int,
    past_ttl: int,
    skip_empty_today: bool = True,
    skip_empty_past: bool = False,
    today_fn: Callable[[], datetime.date] = datetime.date.today,
) -> dict[str, Any]:
    """``ttl`` and ``cache_if`` for functions of a date where today's data still moves.

    A call whose ``date_param`` argument is today keeps its result ``today_ttl``
    seconds, and (``skip_empty_today``) does not keep an empty one; a call for another
    date keeps it ``past_ttl`` seconds, empty results included unless
    ``skip_empty_past``. The parameter must be part of the key (not ``exclude``-d):
    a call without it raises ``KeyError`` naming it.
    """

    def date_of(args: dict[str, Any]) -> Any:
        if date_param not in args:
            raise KeyError(
                f"today_aware(date_param={date_param!r}) requires {date_param!r} in the "
                f"filtered args dict; available keys: {sorted(args)}. Likely cause: "
                "parameter is named differently or was removed by `exclude=`."
            )
        return args[date_param]

    def ttl(result: Any, args: dict[str, Any]) -> int:
        return today_ttl if date_of(args) == today_fn() else past_ttl

    def cache_if(result: Any, args: dict[str, Any]) -> bool:
        is_today = date_of(args) == today_fn()
        if result:
            return True
        return not (skip_empty_today if is_today else skip_empty_past)

    return {"ttl": ttl, "cache_if": cache_if}
