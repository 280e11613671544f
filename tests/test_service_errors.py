"""How the service answers errors: a client's mistake is its 4xx naming the field; anything
else is a 500 with a request id, its traceback logged under that id, and the keep-alive
connection kept; every response carries ``X-Request-ID``. And /docs works offline."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from serve_process import free_port

from lifelong_rec.service import Settings, create_app
from lifelong_rec.service.app import server_config
from lifelong_rec.service.errors import (
    ClientError,
    Conflict,
    Invalid,
    NotFound,
    NotReady,
    ServiceError,
)

TOKEN = "errors-token-0123456789"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    app = create_app(Settings(db=tmp_path_factory.mktemp("errors") / "e.db", token=TOKEN))
    with TestClient(app):  # runs the lifespan: the engine starts
        yield app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    # a client of its own: the one that ran the lifespan keeps it running
    yield TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


def _raising(error: BaseException) -> Callable[..., object]:
    def raise_it(*args: object, **kwargs: object) -> object:
        raise error

    return raise_it


# -------------------------------------------------------------------- the service's faults


@pytest.mark.parametrize(
    "error",
    [
        ValueError("an internal bug that looked like the client's fault"),  # was a 422
        RuntimeError("an internal bug"),
        KeyError("missing"),
        ServiceError("an expected failure of the service's own"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_internal_error_is_a_500_with_a_request_id_and_a_logged_traceback(
    app: FastAPI,
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
) -> None:
    monkeypatch.setattr(app.state.engine, "item", _raising(error))
    with caplog.at_level(logging.ERROR, logger="lifelong_rec.service"):
        response = client.get("/items/i1")
    assert response.status_code == 500
    request_id = response.json()["request_id"]
    assert response.json() == {"detail": "internal error", "request_id": request_id}
    assert response.headers["x-request-id"] == request_id
    assert str(error) not in response.text  # nothing of the internals
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert request_id in record.getMessage() and "GET /items/i1" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is error
    assert "Traceback" in caplog.text and type(error).__name__ in caplog.text


@pytest.mark.parametrize(
    ("error", "status", "field"),
    [
        (Invalid("must be at most 200", field="k"), 422, "k"),
        (NotFound("item 'x' is unknown"), 404, None),
        (Conflict("decision 'd' has feedback already", field="decision_id"), 409, "decision_id"),
        (ClientError("a request the client must change"), 400, None),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_a_client_error_is_its_status_naming_the_field(
    app: FastAPI,
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: ClientError,
    status: int,
    field: str | None,
) -> None:
    monkeypatch.setattr(app.state.engine, "item", _raising(error))
    with caplog.at_level(logging.ERROR, logger="lifelong_rec.service"):
        response = client.get("/items/i1")
    assert response.status_code == status
    assert response.json() == {"detail": str(error), "field": field}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_not_ready_is_a_503_with_retry_after(
    app: FastAPI, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.state.engine, "item", _raising(NotReady("no model yet")))
    response = client.get("/items/i1")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["detail"] == "no model yet"


def test_request_validation_errors_stay_422_naming_the_fields(client: TestClient) -> None:
    response = client.get("/users/u1/recommendations", params={"k": 0})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "query.k"
    assert response.json()["detail"].startswith("query.k: ")


# -------------------------------------------------------------------- request ids


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("req-42.a:b_C", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("two words", False),
        ("line\tbreak", False),
        ("", False),
    ],
)
def test_every_response_has_a_request_id_the_clients_when_sane(
    client: TestClient, sent: str, kept: bool
) -> None:
    for method, path in [("GET", "/healthz"), ("GET", "/items/unknown"), ("POST", "/events")]:
        response = client.request(method, path, headers={"X-Request-ID": sent})
        request_id = response.headers["x-request-id"]
        assert (request_id == sent) is kept
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", request_id)
    fresh = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(fresh) == 3


def test_a_401_carries_the_request_id(app: FastAPI) -> None:
    anonymous = TestClient(app)
    response = anonymous.post("/events", json={"user": "u", "item": "i"})
    assert response.status_code == 401
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


# -------------------------------------------------------------------- over a real connection


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[FastAPI, int]]:
    """``server_config``'s uvicorn in a thread of this process, so a test can break its
    engine; yields the app and the port."""
    port = free_port()
    config = server_config(Settings(db=tmp_path / "e.db", token=TOKEN), "127.0.0.1", port, "error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield config.app, port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP/1.1 request on ``sock`` and read its response (Content-Length framed)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65_536)
        assert chunk, f"the server closed the connection; got {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65_536)
    return int(status_line.split()[1]), headers, body


def test_a_500_keeps_the_connection_alive(
    live: tuple[FastAPI, int], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Starlette's ServerErrorMiddleware answered and re-raised: uvicorn closed the
    # connection after every 500, and logged the traceback without a request id.
    app, port = live
    monkeypatch.setattr(app.state.engine, "item", _raising(ValueError("a bug")))
    with (
        caplog.at_level(logging.ERROR),
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        status, headers, body = _exchange(sock, b"GET /items/i1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status == 500 and headers["x-request-id"].encode() in body
        assert headers.get("connection") != "close"
        status, _, body = _exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status == 200 and body == b'{"status":"ok"}'
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and headers["x-request-id"] in errors[0].getMessage()
    assert errors[0].name == "lifelong_rec.service"  # not uvicorn's "Exception in ASGI app"


# -------------------------------------------------------------------- offline docs


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_nothing_from_elsewhere(client: TestClient, page: str) -> None:
    # /docs loaded Swagger UI from a CDN: a blank page without internet
    response = client.get(page)
    assert response.status_code == 200
    links = _Links()
    links.feed(response.text)
    assert len(links.urls) >= 2, links.urls  # the script and the favicon, at least
    assert "http://" not in response.text and "https://" not in response.text
    for url in links.urls:
        assert url.startswith("/docs/assets/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1_000, url
    assert client.get("/openapi.json").status_code == 200
