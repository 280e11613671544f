"""Service freshness (issue #8): how soon after ``POST /events`` a brand-new user's
recommendations reflect their events. Target: p95 under 1 s.

A ``lifelong-rec serve`` subprocess (model mf, default cadences: the learner publishes at most
every 0.2 s) first ingests the shop of ``bench/service_load.py`` (``--events`` events over
10,000 items) and catches up. Then, ``--users`` times: a new user clicks ``--clicks`` known
items (one keyed ``POST /events``), and ``GET /users/{u}/recommendations?k=10`` is polled every
``--poll-ms`` until ``fallback`` is false, i.e. the serving model knows the user from those
clicks (before, they get the cold-start popularity list). The delay runs from just before the
POST to the answer of the first poll that is not the fallback; the seen items are checked to
be left out of that list. Users arrive a random 0-0.3 s apart, so the delays sample every phase
of the publish cadence.

Run: .venv/bin/python bench/service_freshness.py [--users 100] [--events 200000] [--tag TAG]
Writes bench/results/service-freshness[-TAG].json (with the machine) and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from common import report
from service_load import Server, ingest, make_events


async def fresh_user(
    session: aiohttp.ClientSession, url: str, user: str, items: list[str], poll_s: float
) -> dict[str, float]:
    """POST the user's clicks, then poll until their list is not the fallback."""
    now = time.time()
    body = {
        "events": [
            {"user": user, "item": item, "kind": "click", "timestamp": now} for item in items
        ],
        "key": f"fresh-{user}",
    }
    started = time.perf_counter()
    async with session.post(url + "/events", json=body) as response:
        answer = await response.json()
        assert response.status == 200 and answer["accepted"] == len(items), answer
    posted = time.perf_counter()
    polls = 0
    while time.perf_counter() - started < 30.0:
        async with session.get(f"{url}/users/{user}/recommendations?k=10") as response:
            recommended = await response.json()
            assert response.status == 200, recommended
        polls += 1
        if not recommended["fallback"]:
            shown = {entry["item"] for entry in recommended["items"]}
            assert not shown & set(items), f"seen items recommended to {user}"
            return {
                "delay_s": time.perf_counter() - started,
                "post_s": posted - started,
                "polls": polls,
            }
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"{user} still gets the fallback 30 s after their events")


async def run(args: argparse.Namespace) -> dict[str, object]:
    events = make_events(5_000, 10_000, args.events, args.seed)
    items = np.unique([event["item"] for event in events])
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="service-freshness-") as folder:
        server = Server(Path(folder) / "events.db")
        try:
            async with aiohttp.ClientSession() as session:
                await server.wait(session, "/healthz", 120)
                ingestion, _ = await ingest(session, server.url, events, 2_000, 2)
                await server.caught_up(session, 300)
                print(f"ingested: {ingestion}", file=sys.stderr)
                samples = []
                for number in range(args.users):
                    await asyncio.sleep(float(rng.uniform(0.0, 0.3)))
                    clicked = rng.choice(items, args.clicks, replace=False).tolist()
                    samples.append(
                        await fresh_user(
                            session, server.url, f"fresh-{number}", clicked, args.poll_ms / 1e3
                        )
                    )
        finally:
            server.stop()
    delays = np.array([sample["delay_s"] for sample in samples])
    posts = np.array([sample["post_s"] for sample in samples])
    return {
        "model": "mf",
        "publish_seconds": 0.2,
        "events": len(events),
        "users": args.users,
        "clicks_per_user": args.clicks,
        "poll_ms": args.poll_ms,
        "target_p95_s": 1.0,
        "delay_s": {
            "p50": round(float(np.percentile(delays, 50)), 3),
            "p95": round(float(np.percentile(delays, 95)), 3),
            "max": round(float(delays.max()), 3),
            "mean": round(float(delays.mean()), 3),
        },
        "post_s": {
            "p50": round(float(np.percentile(posts, 50)), 4),
            "max": round(float(posts.max()), 4),
        },
        "polls_mean": round(float(np.mean([sample["polls"] for sample in samples])), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--poll-ms", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    report(f"service-freshness{'-' + args.tag if args.tag else ''}", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
