"""The service's settings and what ``lifelong-rec serve`` makes of them: an unknown
``LIFELONG_REC_*`` variable or a bad value stops the start in one line; open writes off
loopback need saying so; the token is checked before a write's body is read; and the
connection limits (header and body timeouts, header size, concurrency) hold on a real server.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from serve_process import ServeProcess
from threadpoolctl import threadpool_info, threadpool_limits

from lifelong_rec.cli import main
from lifelong_rec.service import Settings, create_app
from lifelong_rec.service.settings import is_loopback

TOKEN = "settings-token-0123456789"
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MAX_HEADER_BYTES = 4_096
MAX_CONNECTIONS = 8


@pytest.fixture(autouse=True)
def _no_settings_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LIFELONG_REC_"):
            monkeypatch.delenv(name)


# -------------------------------------------------------------------- the settings class


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        # LIFELONG_REC_TOKN=secret started a service with every write endpoint open
        ("LIFELONG_REC_TOKN", "LIFELONG_REC_TOKN is not a setting; did you mean "
         "LIFELONG_REC_TOKEN?"),
        ("LIFELONG_REC_MAXK", "did you mean LIFELONG_REC_MAX_K?"),
        ("lifelong_rec_polcy", "lifelong_rec_polcy is not a setting; did you mean "
         "LIFELONG_REC_POLICY?"),
        ("LIFELONG_REC_PUBLISH_SECOND", "did you mean LIFELONG_REC_PUBLISH_SECONDS?"),
        ("LIFELONG_REC_ZZZZZZZZ", "is not a setting; the settings are "
         "LIFELONG_REC_ALLOW_OPEN_WRITES"),
    ],
)  # fmt: skip
def test_an_unknown_variable_stops_the_start_naming_the_nearest_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, message: str
) -> None:
    monkeypatch.setenv(variable, "secret-value-123")
    with pytest.raises(ValidationError, match=message.replace("?", r"\?")) as raised:
        Settings()
    assert "secret-value-123" not in str(raised.value)


def test_known_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELONG_REC_TOKEN", TOKEN)
    monkeypatch.setenv("lifelong_rec_max_k", "7")
    monkeypatch.setenv("LIFELONG_REC_ALLOW_OPEN_WRITES", "true")
    settings = Settings()
    assert (settings.token, settings.max_k, settings.allow_open_writes) == (TOKEN, 7, True)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "at least 8 characters"),
        ("x7q2", "at least 8 characters"),
        (" " * 12, "the token is blank"),
        ("\t\n" * 6, "the token is blank"),
        (f" {TOKEN}", "white space around it"),
        (f"{TOKEN}\n", "white space around it"),
    ],
)
def test_a_bad_token_is_refused_without_printing_it(token: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as raised:
        Settings(token=token)
    if token.strip():
        assert token.strip() not in str(raised.value)


def test_the_token_is_not_in_the_settings_repr() -> None:
    assert TOKEN not in repr(Settings(token=TOKEN))


@pytest.mark.parametrize(
    ("host", "token", "allow_open_writes", "refused"),
    [
        ("127.0.0.1", None, False, False),
        ("127.1.2.3", None, False, False),
        ("localhost", None, False, False),
        ("::1", None, False, False),
        ("0.0.0.0", None, False, True),
        ("::", None, False, True),
        ("192.168.1.10", None, False, True),
        ("my-host.example", None, False, True),
        ("0.0.0.0", TOKEN, False, False),
        ("0.0.0.0", None, True, False),
    ],
)
def test_open_writes_off_loopback_need_saying_so(
    host: str, token: str | None, allow_open_writes: bool, refused: bool
) -> None:
    settings = Settings(token=token, allow_open_writes=allow_open_writes)
    if refused:
        with pytest.raises(ValueError, match="LIFELONG_REC_ALLOW_OPEN_WRITES=true"):
            settings.check_exposure(host)
    else:
        settings.check_exposure(host)
    assert is_loopback(host) is (host in ("127.0.0.1", "127.1.2.3", "localhost", "::1"))


# -------------------------------------------------------------------- lifelong-rec serve


def _serve_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> tuple[int, str]:
    code = main(["serve", "--db", str(tmp_path / "e.db"), "--port", "1", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "args", "message", "secret"),
    [
        ({}, ["--host", "0.0.0.0"], "--host: 0.0.0.0 is not a loopback address and no token "
         "is set", None),
        ({"LIFELONG_REC_TOKN": TOKEN}, [], "LIFELONG_REC_TOKN is not a setting; did you mean "
         "LIFELONG_REC_TOKEN?", TOKEN),
        ({"LIFELONG_REC_TOKEN": "short-1"}, [], "setting token (LIFELONG_REC_TOKEN): String "
         "should have at least 8 characters", "short-1"),
        ({"LIFELONG_REC_MAX_K": "ten"}, [], "setting max_k (LIFELONG_REC_MAX_K): ", None),
        ({}, ["--model", "mf(factors=oops"], "--model: model 'mf(factors=oops'", None),
        ({}, ["--strategy", "sometimes"], "--strategy: unknown strategy 'sometimes'", None),
        ({}, ["--policy", "ucb"], "--policy: unknown policy 'ucb'", None),
        ({"LIFELONG_REC_REWARDS": "gold"}, [], "unknown reward preset 'gold'", None),
    ],
)  # fmt: skip
def test_serve_refuses_bad_settings_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    env: dict[str, str],
    args: list[str],
    message: str,
    secret: str | None,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, err = _serve_fails(capsys, tmp_path, *args)
    assert code == 2, err
    assert err.startswith("lifelong-rec: error: ") and len(err.strip().splitlines()) == 1
    assert message in err
    assert secret is None or secret not in err
    assert not (tmp_path / "e.db").exists()  # refused before anything was opened


def test_serve_on_loopback_without_a_token_starts_with_a_warning(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "e.db", {}, tmp_path / "server.log")
    try:
        server.wait_healthy(90)
        response = httpx.post(f"{server.url}/events", json={"user": "u", "item": "i"})
        assert response.status_code == 200, response.text
    finally:
        server.stop()
    assert "no token is set" in server.output()


# -------------------------------------------------------------------- limits, on a real server


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("limits")
    env = {
        "LIFELONG_REC_TOKEN": TOKEN,
        "LIFELONG_REC_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "LIFELONG_REC_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "LIFELONG_REC_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "LIFELONG_REC_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    server = ServeProcess(folder / "e.db", env, folder / "server.log")
    try:
        server.wait_healthy(90)
        yield server
    finally:
        server.stop()


def _connect(server: ServeProcess) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def _until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65_536):
        received += chunk
    return received


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """The status and the raw text of one response (headers and a Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65_536)
        assert chunk, f"closed; got {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65_536)
    return int(head.split()[1]), head + b"\r\n\r\n" + body


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    limited: ServeProcess,
) -> None:
    with _connect(limited) as sock:
        started = time.monotonic()
        assert _until_closed(sock).startswith(b"HTTP/1.1 408 ")
        assert HEADER_TIMEOUT * 0.9 <= time.monotonic() - started < HEADER_TIMEOUT + 5


def test_headers_that_trickle_in_are_cut_at_the_header_timeout(limited: ServeProcess) -> None:
    # Slowloris: a header line a byte at a time held the connection open for good.
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 1_000
    with _connect(limited) as sock:
        started = time.monotonic()
        for byte in request:
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable:
                break
            sock.sendall(bytes([byte]))
        else:
            raise AssertionError("the server let the headers trickle for 50 s")
        assert _until_closed(sock).startswith(b"HTTP/1.1 408 ")
        assert HEADER_TIMEOUT * 0.9 <= time.monotonic() - started < HEADER_TIMEOUT + 5


def test_a_partial_header_line_that_stalls_is_cut(limited: ServeProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Sta")
        started = time.monotonic()
        assert _until_closed(sock).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < HEADER_TIMEOUT + 5


def test_a_keep_alive_connection_serves_requests_past_the_header_timeout(
    limited: ServeProcess,
) -> None:
    # the header timer counts from each request's first byte, not from the connection's start
    with _connect(limited) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _response(sock)[0] == 200
            time.sleep(HEADER_TIMEOUT * 0.6)


def test_headers_over_the_limit_are_431(limited: ServeProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * MAX_HEADER_BYTES)
        assert _until_closed(sock).startswith(b"HTTP/1.1 431 ")


def test_a_slow_body_is_cut_with_408(limited: ServeProcess) -> None:
    head = (
        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
    )
    with _connect(limited) as sock:
        sock.sendall(head.encode() + b'{"user": ')
        started = time.monotonic()
        status, text = _response(sock)
        assert status == 408 and b"request body not received within 1 s" in text
        assert BODY_TIMEOUT * 0.9 <= time.monotonic() - started < BODY_TIMEOUT + 5
        assert _until_closed(sock) == b""  # and the connection is closed


def test_a_write_without_the_token_is_401_before_its_body_is_read(limited: ServeProcess) -> None:
    # FastAPI read and validated the whole body before the token dependency ran
    head = b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    with _connect(limited) as sock:
        sock.sendall(head + b"Content-Length: 1000000000\r\n\r\n" + b'{"user": "u", ')
        started = time.monotonic()
        status, text = _response(sock)
        assert status == 401 and b"bearer token" in text and b"www-authenticate: Bearer" in text
        assert time.monotonic() - started < BODY_TIMEOUT  # not after waiting for the body
        assert _until_closed(sock) == b""  # the gigabyte is not drained


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong-token-0123"}, 401),
     ({"Authorization": f"bearer {TOKEN}"}, 422), ({"Authorization": f"Bearer {TOKEN}"}, 422)],
)  # fmt: skip
def test_invalid_json_without_the_token_is_401_not_422(
    limited: ServeProcess, headers: dict[str, str], status: int
) -> None:
    for method, path in [("POST", "/events"), ("PUT", "/items/x"), ("POST", "/feedback")]:
        response = httpx.request(
            method,
            limited.url + path,
            content=b'{"user": 5,',
            headers=headers | {"Content-Type": "application/json"},
        )
        assert response.status_code == status, (path, response.text)


def test_connections_beyond_the_limit_are_503(limited: ServeProcess) -> None:
    idle = [_connect(limited) for _ in range(MAX_CONNECTIONS)]
    try:
        with _connect(limited) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _response(sock)[0] == 503
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while httpx.get(f"{limited.url}/healthz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


# -------------------------------------------------------------------- BLAS threads


def _blas_threads() -> set[int]:
    """The threads of the process-wide BLAS pools (numpy's and scipy's OpenBLAS). An OpenBLAS
    threaded by OpenMP (faiss's) keeps its limit per thread: not one this thread can read."""
    return {pool["num_threads"] for pool in threadpool_info()
            if pool["user_api"] == "blas" and pool.get("threading_layer") != "openmp"}  # fmt: skip


@pytest.mark.parametrize(("setting", "serving"), [(1, {1}), (None, {2})])
def test_the_service_runs_blas_on_blas_threads_while_it_serves(
    tmp_path: Path, setting: int | None, serving: set[int]
) -> None:
    """One BLAS thread per call while the service runs (requests and the learner are its
    parallelism), the process's own limit again once it stops; ``None`` leaves it alone. The
    service sets it from the thread that starts it (TestClient's, not this one), whichever
    thread set it last (threadpoolctl lets only that one change OpenBLAS's)."""
    settings = Settings(db=tmp_path / "events.db", model="pop", blas_threads=setting)
    own = threadpool_limits(2, user_api="blas")  # this thread sets the process's limit
    try:
        assert _blas_threads() == {2}
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").status_code == 200
            assert _blas_threads() == serving
        assert _blas_threads() == {2}
    finally:
        own.restore_original_limits()
