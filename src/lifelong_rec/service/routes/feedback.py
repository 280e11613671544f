"""``POST /feedback``: rewards for a served decision."""

from __future__ import annotations

from fastapi import APIRouter

from lifelong_rec.service.deps import EngineDep, Writer
from lifelong_rec.service.schemas import FeedbackIn, FeedbackOut

router = APIRouter(tags=["feedback"])


@router.post(
    "/feedback",
    response_model=FeedbackOut,
    dependencies=[Writer],
    responses={
        404: {"description": "unknown decision"},
        409: {"description": "the decision has feedback already"},
    },
)
async def feedback(body: FeedbackIn, engine: EngineDep) -> dict[str, object]:
    """What the user did with a decision's items: each reward is appended to the log as an
    event (with the decision's policy, model version and propensity) and the policy that
    decided learns from the slate's rewards (shown items not named count as 0). One
    feedback per decision."""
    return engine.feedback(body.decision_id, [r.model_dump() for r in body.rewards])
