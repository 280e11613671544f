"""Service load (issue #8): batched ingestion and recommendation traffic over loopback HTTP.

A ``lifelong-rec serve`` subprocess (model mf; once without a policy, once with
``epsilon(epsilon=0.1)``; ``--log-level warning``, so no access log) on a fresh event log is
loaded from this process on 127.0.0.1:

1. Ingestion: ``--events`` events over ``--users`` users and ``--items`` items (every item
   appears) are sent as batched ``POST /events`` of ``--batch`` events, each with an
   idempotency key, ``--ingest-connections`` requests in flight. Bodies are encoded before the
   clock starts, so the rate is the server's. Then the learner catches up (``/readyz``, and
   ``learner_offset == log_end`` in ``GET /models``).
2. Throughput (closed loop): ``GET /users/{u}/recommendations?k=10`` for random known users
   from ``--connections`` concurrent aiohttp connections, each sending its next request when
   the last is answered, for ``--seconds`` seconds after a second of warm-up: requests/s and
   client-side latency percentiles. With 32 requests always in flight, latency is about
   32 / throughput: this phase measures capacity, not latency.
3. Latency (open loop): requests arrive at each of ``--rates`` per second (Poisson) for
   ``--rate-seconds`` seconds, whether or not earlier ones were answered; latency runs from
   a request's arrival, so queueing when the server falls behind counts.
4. The closed loop again with ``explain=true`` for ``--explain-seconds`` (0 skips it).

Every served list is a decision the service logs with its impressions (ten events per
request), so the log grows and the learner keeps learning during the load. Before the timed
phases this process freezes its own objects out of its garbage collector's sight, so that
the load generator's own full collections do not count as the server's latency.

Targets on a 2-core machine: >= 1,000 recommendation requests/s with p99 < 20 ms, and
>= 10,000 events/s through batched POSTs. Client and server share the machine's cores.

Run: .venv/bin/python bench/service_load.py [--events 200000] [--seconds 20]
     [--connections 32] [--rates 250,500,1000] [--policies "none,epsilon(epsilon=0.1)"]
     [--tag TAG]
Writes bench/results/service-load[-TAG].json (with the machine) and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from common import percentiles, report

from lifelong_rec.models import split_specs

KINDS = np.array(["view", "click", "cart", "purchase"])
KIND_SHARES = np.array([0.7, 0.2, 0.07, 0.03])
START = 1.7e9


# ------------------------------------------------------------------------------ data


def make_events(n_users: int, n_items: int, n_events: int, seed: int) -> list[dict[str, object]]:
    """A simple shop: each user prefers one of 20 topics; popularity within a topic is Zipf.

    Every item appears at least once (the first ``n_items`` events, by random users), so the
    model knows the whole catalogue. Timestamps increase by one second per event.
    """
    rng = np.random.default_rng(seed)
    n_topics = 20
    user_topic = rng.integers(n_topics, size=n_users)
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    item_topic = rng.integers(n_topics, size=n_items)
    appeal = 1.0 / (1.0 + rng.permutation(n_items)) ** 0.8
    by_topic = [np.flatnonzero(item_topic == t) for t in range(n_topics)]
    topic_p = [appeal[items] / appeal[items].sum() for items in by_topic]
    rest = max(0, n_events - n_items)
    users = np.concatenate(
        [
            rng.integers(n_users, size=n_items),
            rng.choice(n_users, rest, p=activity / activity.sum()),
        ]
    )
    items = np.empty(len(users), dtype=np.int64)
    items[:n_items] = rng.permutation(n_items)
    on_topic = rng.random(rest) < 0.8
    for t in range(n_topics):
        rows = np.flatnonzero(on_topic & (user_topic[users[n_items:]] == t))
        items[n_items + rows] = rng.choice(by_topic[t], len(rows), p=topic_p[t])
    off = np.flatnonzero(~on_topic)
    items[n_items + off] = rng.choice(n_items, len(off), p=appeal / appeal.sum())
    kinds = rng.choice(KINDS, len(users), p=KIND_SHARES)
    return [
        {"user": f"u{u}", "item": f"i{i}", "kind": str(k), "timestamp": START + n}
        for n, (u, i, k) in enumerate(zip(users.tolist(), items.tolist(), kinds, strict=True))
    ]


# ------------------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A ``lifelong-rec serve`` subprocess on a free loopback port (log level warning)."""

    def __init__(self, db: Path, policy: str | None = None) -> None:
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "lifelong_rec", "serve", "--db", str(db)]
        command += ["--port", str(self.port), "--model", "mf", "--log-level", "warning"]
        if policy is not None:
            command += ["--policy", policy]
        self.log = db.with_suffix(".server.log")
        self.stderr = open(self.log, "w")  # closed in stop
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.stderr)

    async def wait(self, session: aiohttp.ClientSession, path: str, timeout: float) -> float:
        """Seconds until ``path`` answers 200."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log.read_text()[-3000:]}")
            try:
                async with session.get(self.url + path) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{path} not 200 after {timeout} s")

    async def caught_up(self, session: aiohttp.ClientSession, timeout: float) -> float:
        """Seconds until the learner has learned the whole log (and /readyz says so)."""
        started = time.perf_counter()
        await self.wait(session, "/readyz", timeout)
        while time.perf_counter() - started < timeout:
            async with session.get(self.url + "/models") as response:
                models = await response.json()
            if models["learner_offset"] >= models["log_end"] and models["serving_version"]:
                return time.perf_counter() - started
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the learner did not catch up in {timeout} s: {models}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()


# ------------------------------------------------------------------------------ load


async def ingest(
    session: aiohttp.ClientSession,
    urls: str | list[str],
    events: list[dict],
    batch: int,
    connections: int,
) -> tuple[dict[str, object], dict[str, int]]:
    """POST the events in keyed batches, ``connections`` at a time (connection ``n`` to
    ``urls[n % len(urls)]`` when several replicas are given); events/s, and what was
    acknowledged, ``{key: accepted}``."""
    urls = [urls] if isinstance(urls, str) else urls
    bodies = [
        (f"load-{first}",
         json.dumps({"events": events[first : first + batch], "key": f"load-{first}"}).encode())
        for first in range(0, len(events), batch)
    ]  # fmt: skip
    queue = list(reversed(bodies))
    latencies: list[float] = []
    acknowledged: dict[str, int] = {}

    async def worker(url: str) -> None:
        while queue:
            key, body = queue.pop()
            sent = time.perf_counter()
            async with session.post(
                url + "/events", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"POST /events: {response.status} {answer}")
            latencies.append(time.perf_counter() - sent)
            acknowledged[key] = answer["accepted"]

    started = time.perf_counter()
    await asyncio.gather(*(worker(urls[n % len(urls)]) for n in range(connections)))
    seconds = time.perf_counter() - started
    accepted = sum(acknowledged.values())
    return {
        "events": len(events),
        "accepted": accepted,
        "batch": batch,
        "posts": len(bodies),
        "connections": connections,
        "seconds": round(seconds, 2),
        "events_per_s": round(accepted / seconds),
        "post": percentiles(latencies),
    }, acknowledged


async def recommend_load(
    session: aiohttp.ClientSession,
    url: str,
    users: np.ndarray,
    seconds: float,
    connections: int,
    explain: bool,
    seed: int,
) -> dict[str, object]:
    """``connections`` clients asking for top-10 lists of random users, back to back."""
    rng = np.random.default_rng(seed)
    query = "?k=10&explain=true" if explain else "?k=10"
    paths = [f"{url}/users/{user}/recommendations{query}" for user in rng.choice(users, 100_000)]
    latencies: list[float] = []
    failures: dict[str, int] = {}
    fallbacks = 0
    measuring = False
    stop_at = 0.0

    async def client(number: int) -> None:
        nonlocal fallbacks
        position = number
        while time.perf_counter() < stop_at:
            path = paths[position % len(paths)]
            position += connections
            sent = time.perf_counter()
            async with session.get(path) as response:
                body = await response.read()
                status = response.status
            took = time.perf_counter() - sent
            if not measuring:
                continue
            if status != 200:
                failures[str(status)] = failures.get(str(status), 0) + 1
                continue
            latencies.append(took)
            fallbacks += b'"fallback":true' in body

    stop_at = time.perf_counter() + 1.0  # warm-up: connections, caches
    await asyncio.gather(*(client(n) for n in range(connections)))
    measuring = True
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(client(n) for n in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        "explain": explain,
        "connections": connections,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "failures": failures,
        "requests_per_s": round(len(latencies) / elapsed),
        "fallback_share": round(fallbacks / max(1, len(latencies)), 4),
        **percentiles(latencies),
    }


async def rate_load(
    session: aiohttp.ClientSession,
    url: str,
    users: np.ndarray,
    rate: float,
    seconds: float,
    seed: int,
) -> dict[str, object]:
    """Open loop: requests arrive at ``rate`` per second (Poisson), whether or not the earlier
    ones were answered. Latency runs from a request's arrival, so time spent queued in the
    client, when the server falls behind, counts too."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * seconds * 1.2)))
    arrivals = arrivals[arrivals < seconds]
    paths = [
        f"{url}/users/{user}/recommendations?k=10" for user in rng.choice(users, len(arrivals))
    ]
    latencies: list[float] = []
    failures: dict[str, int] = {}

    async def one(path: str, due: float) -> None:
        async with session.get(path) as response:
            await response.read()
            status = response.status
        if status == 200:
            latencies.append(time.perf_counter() - due)
        else:
            failures[str(status)] = failures.get(str(status), 0) + 1

    tasks = []
    started = time.perf_counter()
    for path, offset in zip(paths, arrivals.tolist(), strict=True):
        due = started + offset
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(path, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {
        "rate": rate,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "failures": failures,
        "requests_per_s": round(len(latencies) / elapsed),
        **percentiles(latencies),
    }


async def run_config(args: argparse.Namespace, policy: str | None, events: list[dict]) -> dict:
    users = np.unique([event["user"] for event in events])
    with tempfile.TemporaryDirectory(prefix="service-load-") as folder:
        server = Server(Path(folder) / "events.db", policy)
        connector = aiohttp.TCPConnector(limit=max(args.connections, args.ingest_connections))
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                started_s = await server.wait(session, "/healthz", 120)
                ingestion, _ = await ingest(
                    session, server.url, events, args.batch, args.ingest_connections
                )
                catch_up_s = await server.caught_up(session, 300)
                result = {
                    "policy": policy,
                    "server_start_s": round(started_s, 2),
                    "ingest": ingestion,
                    "learner_catch_up_s": round(catch_up_s, 2),
                }
                print(f"{policy}: {result}", file=sys.stderr)
                # This process's objects (the events it sent) out of its collector's sight:
                # full collections walked them for 40-65 ms, which the open loop counted as
                # the server's latency.
                gc.collect()
                gc.freeze()
                result["recommend"] = await recommend_load(
                    session, server.url, users, args.seconds, args.connections, False, args.seed
                )
                print(f"{policy}: {result['recommend']}", file=sys.stderr)
                result["recommend_at_rate"] = []
                for rate in args.rates:
                    at_rate = await rate_load(
                        session, server.url, users, rate, args.rate_seconds, args.seed
                    )
                    result["recommend_at_rate"].append(at_rate)
                    print(f"{policy}: {at_rate}", file=sys.stderr)
                if args.explain_seconds > 0:
                    result["recommend_explain"] = await recommend_load(
                        session,
                        server.url,
                        users,
                        args.explain_seconds,
                        args.connections,
                        True,
                        args.seed,
                    )
                    print(f"{policy}: {result['recommend_explain']}", file=sys.stderr)
                async with session.get(server.url + "/models") as response:
                    models = await response.json()
                result["log_end_after_load"] = models["log_end"]
        finally:
            gc.unfreeze()
            server.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--ingest-connections", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rates", default="250,500,1000", help="open-loop request rates")
    parser.add_argument("--rate-seconds", type=float, default=10.0)
    parser.add_argument("--explain-seconds", type=float, default=10.0)
    parser.add_argument("--policies", default="none,epsilon(epsilon=0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    args.rates = [float(rate) for rate in args.rates.split(",") if rate]
    policies = [None if spec == "none" else spec for spec in split_specs(args.policies)]
    events = make_events(args.users, args.items, args.events, args.seed)
    runs = [asyncio.run(run_config(args, policy, events)) for policy in policies]
    tag = f"-{args.tag}" if args.tag else ""
    report(
        f"service-load{tag}",
        {
            "model": "mf",
            "users": args.users,
            "items": args.items,
            "events": len(events),
            "targets": {"recommend_per_s": 1_000, "recommend_p99_ms": 20, "events_per_s": 10_000},
            "runs": runs,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
