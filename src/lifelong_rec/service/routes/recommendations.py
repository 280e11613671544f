"""``GET /users/{user_id}/recommendations``: the top-k, with reasons and a logged decision."""

from __future__ import annotations

import logging
from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Query

from lifelong_rec.service.deps import EngineDep, ReadClient
from lifelong_rec.service.schemas import ID_PATTERN, MAX_ID_LENGTH, RecommendationsOut

router = APIRouter(tags=["recommendations"])
log = logging.getLogger("lifelong_rec.service")

#: explanations computed at once, off the event loop (each can take a core for a while)
_EXPLAINING = anyio.CapacityLimiter(2)


@router.get(
    "/users/{user_id}/recommendations",
    response_model=RecommendationsOut,
    responses={
        422: {"description": "k over the service's max_k, or a bad id"},
        503: {"description": "no model has learned anything yet"},
    },
)
async def recommendations(
    user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)],
    engine: EngineDep,
    client: ReadClient,
    k: Annotated[int, Query(ge=1, description="list length, at most the max_k setting")] = 10,
    explain: bool = False,
) -> dict[str, object]:
    """The user's list from the serving snapshot (an unknown user gets the popularity
    fallback), re-ranked by their policy; the decision is logged with its propensities under
    ``decision_id``, for ``POST /feedback`` (reads without the service's token are logged
    within a per-client budget: beyond it, ``decision_id`` is null).

    With ``explain=true`` each item carries the reasons behind its score. They are computed
    off the event loop and within ``explain_seconds``: past that the list comes without
    reasons (``method`` null) rather than late."""
    engine.check_k(k)
    decided = engine.recommend(user_id, k, client=client)
    if not explain:
        return decided.result
    with anyio.move_on_after(engine.settings.explain_seconds):
        return await anyio.to_thread.run_sync(
            engine.explain, decided, limiter=_EXPLAINING, abandon_on_cancel=True
        )
    engine.metrics.explain_timeouts.inc()
    log.warning("explanations for %r took over %s s: served without", user_id,
                engine.settings.explain_seconds)  # fmt: skip
    return decided.result
