"""The catalogue: ``PUT /items/{item_id}``, ``GET /items/{item_id}``, ``.../similar``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from lifelong_rec.service.deps import EngineDep, Writer
from lifelong_rec.service.schemas import ID_PATTERN, MAX_ID_LENGTH, ItemIn, ItemOut, SimilarOut

router = APIRouter(tags=["items"])
ItemId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]


@router.put("/items/{item_id}", response_model=ItemOut, dependencies=[Writer])
def put_item(item_id: ItemId, body: ItemIn, engine: EngineDep) -> dict[str, object]:
    """Add or replace an item's title, text and categories. With a model that reads text
    (the transformer), a new item becomes recommendable at once, through its text."""
    engine.put_item(item_id, body.title, body.text, body.categories)
    return engine.item(item_id)


@router.get(
    "/items/{item_id}", response_model=ItemOut, responses={404: {"description": "unknown item"}}
)
def get_item(item_id: ItemId, engine: EngineDep) -> dict[str, object]:
    return engine.item(item_id)


@router.get(
    "/items/{item_id}/similar",
    response_model=SimilarOut,
    responses={404: {"description": "unknown item"}},
)
async def similar(
    item_id: ItemId, engine: EngineDep, k: Annotated[int, Query(ge=1)] = 10
) -> dict[str, object]:
    """The items most like this one by the serving model's item representations (``k`` at
    most the max_k setting)."""
    engine.check_k(k)
    return engine.similar(item_id, k)
