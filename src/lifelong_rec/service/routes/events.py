"""``POST /events``: one event or a batch, validated, cleaned and appended durably."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse

from lifelong_rec.service.deps import EngineDep, Writer
from lifelong_rec.service.schemas import EventsBody, EventsIn, EventsOut

router = APIRouter(tags=["events"])


@router.post(
    "/events",
    response_model=EventsOut,
    dependencies=[Writer],
    responses={
        422: {"description": "invalid request, or every event rejected"},
        413: {"description": "more events than the batch limit"},
    },
)
def post_events(body: EventsBody, engine: EngineDep) -> JSONResponse:
    """Append events to the log before answering: an accepted event is durable (it survives
    a crash of the process or the machine). Rows that fail cleaning are quarantined with their
    reason and listed in ``rejections``; the rest are appended whole."""
    events, key = (body.events, body.key) if isinstance(body, EventsIn) else ([body], None)
    if len(events) > engine.settings.max_batch:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"events: {len(events)} events, over the batch limit of {engine.settings.max_batch}",
        )
    ingested = engine.ingest([event.model_dump() for event in events], key)
    out = EventsOut(
        accepted=ingested.accepted,
        rejected=len(ingested.rejections),
        rejections=ingested.rejections,
        first_offset=ingested.first_offset,
        duplicate=ingested.duplicate,
    )
    code = status.HTTP_422_UNPROCESSABLE_CONTENT if not ingested.accepted else status.HTTP_200_OK
    return JSONResponse(out.model_dump(), status_code=code)
