"""The service with the text model: a new catalogue item is recommendable through its text at
once, and explained by text similarity (in-process, through FastAPI's TestClient)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("torch")

from fastapi.testclient import TestClient

from lifelong_rec.data import synthetic_stream
from lifelong_rec.service import Settings, create_app

MODEL = "transformer(epochs=2, dim=16, max_len=10, explain_steps=8)"


def test_a_new_item_is_ranked_and_explained_through_its_text(tmp_path):
    data = synthetic_stream(n_users=100, n_items=80, n_events=3_000, seed=0)
    events = data.events
    rows = events.to_records()
    # explain_seconds: 200 explanations by integrated gradients take a while on a busy machine
    settings = Settings(
        db=tmp_path / "events.db", model=MODEL, publish_seconds=0.05, explain_seconds=60
    )
    with TestClient(create_app(settings)) as client:
        catalogue = data.catalog
        for item, title, text, categories in zip(
            catalogue.item, catalogue.title, catalogue.text, catalogue.categories, strict=True
        ):
            body = {"title": str(title), "text": str(text), "categories": list(categories)}
            assert client.put(f"/items/{item}", json=body).status_code == 200
        assert client.post("/events", json={"events": rows}).status_code == 200
        deadline = time.monotonic() + 120
        while client.get("/models").json()["serving_version"] is None:
            assert time.monotonic() < deadline, "the transformer never published"
            time.sleep(0.1)

        new = {"title": "Brand new kitchen wok", "text": "A kitchen wok, just in",
               "categories": ["Kitchen"]}  # fmt: skip
        answer = client.put("/items/brand-new", json=new)
        assert answer.status_code == 200 and answer.json()["recommendable"] is True

        user = str(events.user[0])
        listed = client.get(
            f"/users/{user}/recommendations", params={"k": 200, "explain": True}
        ).json()
        by_item = {entry["item"]: entry for entry in listed["items"]}
        assert "brand-new" in by_item  # rankable, before anyone has touched it
        kinds = {r["kind"] for r in by_item["brand-new"]["reasons"] if r["item"] is not None}
        assert kinds == {"text"}
        assert all("description is like that of" in r["text"]
                   for r in by_item["brand-new"]["reasons"] if r["kind"] == "text")  # fmt: skip

        similar = client.get("/items/brand-new/similar", params={"k": 5}).json()["items"]
        scores = [entry["score"] for entry in similar]
        assert len(similar) == 5 and "brand-new" not in {entry["item"] for entry in similar}
        assert scores == sorted(scores, reverse=True)
