"""``GET /users/{user_id}/recommendations``: the top-k, with reasons and a logged decision."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from lifelong_rec.service.deps import EngineDep
from lifelong_rec.service.schemas import ID_PATTERN, MAX_ID_LENGTH, RecommendationsOut

router = APIRouter(tags=["recommendations"])


@router.get(
    "/users/{user_id}/recommendations",
    response_model=RecommendationsOut,
    responses={503: {"description": "no model has learned anything yet"}},
)
async def recommendations(
    user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)],
    engine: EngineDep,
    k: Annotated[int, Query(ge=1, le=1_000)] = 10,
    explain: bool = False,
) -> dict[str, object]:
    """The user's list from the serving snapshot (an unknown user gets the popularity
    fallback), re-ranked by their policy; the decision is logged with its propensities under
    ``decision_id``, for ``POST /feedback``."""
    return engine.recommend(user_id, min(k, engine.settings.max_k), explain)
