"""``POST /events``: one event or a batch, checked and cleaned row by row, appended durably."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from lifelong_rec.service.deps import EngineDep, Writer
from lifelong_rec.service.engine import Engine
from lifelong_rec.service.ingest import read_body
from lifelong_rec.service.schemas import EventsOut, Rejection, events_body_schema

router = APIRouter(tags=["events"])


@router.post(
    "/events",
    response_model=EventsOut,
    dependencies=[Writer],
    responses={
        413: {"description": "more events than the batch limit (max_batch)"},
        422: {
            "description": "every event rejected (the body lists them, as a 200 does), or a "
            "body no event can be read from (invalid JSON, events not a list or empty, "
            "unknown keys, a bad key): {detail}"
        },
    },
    # The body is read here, not by FastAPI (see post_events): documented by hand.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": events_body_schema()}},
        }
    },
)
async def post_events(request: Request, engine: EngineDep) -> JSONResponse:
    """Append events to the log before answering: an accepted event is durable (it survives
    a crash of the process or the machine).

    Rows are judged one by one, with the rules files are cleaned with (``service.ingest``):
    a row that fails is quarantined and listed in ``rejections`` with its 0-based ``index`` in
    ``events``, the rest are appended together. The answer is 200 when at least one event was
    accepted, 422 (with the same body) when none was: nothing was stored, and a client that
    reads only the status must not take that for success. A body no row can be read from is a
    422 with ``detail``; more than ``max_batch`` events, a 413.

    The body is read raw, and everything after (JSON parsing, the batch size, each row's
    validation, cleaning, the append) runs in the thread pool: validated by FastAPI, a batch
    of 10,001 events was checked event by event on the event loop (1.3 s for 7.5 MB, every
    other request stalled) before its size was; now a batch over the limit is refused after
    its JSON parse alone.
    """
    body = await request.body()
    out = await run_in_threadpool(_ingest, engine, body)
    code = status.HTTP_200_OK if out.accepted else status.HTTP_422_UNPROCESSABLE_CONTENT
    return JSONResponse(out.model_dump(), status_code=code)


def _ingest(engine: Engine, body: bytes) -> EventsOut:
    batch = read_body(body, engine.settings.max_batch)
    ingested = engine.ingest(batch.rows, batch.key)
    return EventsOut(
        accepted=ingested.accepted,
        rejected=len(ingested.rejections),
        rejections=[Rejection.model_validate(r) for r in ingested.rejections],
        first_offset=ingested.first_offset,
        duplicate=ingested.duplicate,
    )
