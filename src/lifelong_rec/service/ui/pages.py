"""The dashboard's routes: server-rendered pages under ``/ui`` that read the engine as the API
does, and forms that write through the engine methods the API's write endpoints call.

Reading pages are open, as the API's reads are. Every form posts with a CSRF token and, with
a token configured, a signed-in session (see :mod:`~lifelong_rec.service.ui.auth`); a post
that succeeds answers with a redirect to the page that shows its effect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError

from lifelong_rec.events.ids import id_problem
from lifelong_rec.service.errors import ClientError, NotFound, ServiceError
from lifelong_rec.service.schemas import MAX_ID_LENGTH, Id, ItemIn
from lifelong_rec.service.snapshots import DamagedSnapshot
from lifelong_rec.service.ui.auth import SESSION_COOKIE, SESSION_SECONDS
from lifelong_rec.service.ui.data import ingestion, quarantine
from lifelong_rec.service.ui.experiments import (
    experiment_form,
    experiments_page,
    parse_experiment,
)
from lifelong_rec.service.ui.history import History
from lifelong_rec.service.ui.items import placement, search
from lifelong_rec.service.ui.models import compare, models_page, snapshot_problem
from lifelong_rec.service.ui.overview import overview
from lifelong_rec.service.ui.rendering import (
    STATIC,
    Dashboard,
    browser_of,
    cookie_options,
    dashboard_of,
    engine_of,
    local_target,
    message,
    page,
    read_form,
    redirect,
    signer_of,
)
from lifelong_rec.service.ui.users import list_change, timeline_chart, user_history
from lifelong_rec.store import open_log

if TYPE_CHECKING:
    from lifelong_rec.service.engine import Engine

__all__ = ["install", "router"]

_ID = TypeAdapter(Id)
_EXPLAINING = anyio.CapacityLimiter(1)  # the dashboard explains one list at a time
DEFAULT_K = 10
MAX_LIST = 50  # the longest list the Users page shows


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Runs inside the app's lifespan: the engine has started.
    engine: Engine = app.state.engine
    settings = engine.settings
    log = open_log(settings.db, schema=settings.db_schema, timeout=settings.db_timeout_seconds)
    try:
        history = History(engine, log)
        app.state.dashboard = Dashboard(log, history)
        async with history:
            yield
    finally:
        log.close()


router = APIRouter(prefix="/ui", include_in_schema=False, lifespan=_lifespan)


def install(app: FastAPI) -> None:
    """Serve the dashboard in ``app``: its pages under ``/ui``, its files under ``/ui/static``.
    (The app also checks writes with :class:`~lifelong_rec.service.ui.WriteGate`.)"""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")


# ------------------------------------------------------------------------------ overview


@router.get("")
def overview_page(request: Request) -> HTMLResponse:
    return page(request, "overview.html", "overview", _overview(request))


@router.get("/overview/live")
def overview_live(request: Request) -> HTMLResponse:
    """The part of the Overview that refreshes itself."""
    return page(request, "overview_live.html", "overview", _overview(request))


def _overview(request: Request) -> dict[str, object]:
    dashboard = dashboard_of(request)
    return overview(engine_of(request), dashboard.log, dashboard.history.samples())


# ------------------------------------------------------------------------------ models


@router.get("/models")
def models(request: Request, older: str = "", newer: str = "") -> HTMLResponse:
    """The snapshots, what serves, and what changed between the two chosen snapshots."""
    context: dict[str, Any] = models_page(engine_of(request))
    context |= {"compared": None, "older": older, "newer": newer}
    versions = [int(s["version"]) for s in context["snapshots"]]
    error, status = None, 200
    if not older and not newer and len(versions) >= 2:
        context["older"], context["newer"] = str(versions[1]), str(versions[0])  # proposed
    elif older or newer:
        if not (older.isdigit() and newer.isdigit()):
            error, status = "choose two snapshot versions to compare", 422
        else:
            low, high = sorted((int(older), int(newer)))
            try:
                context["compared"] = compare(engine_of(request), low, high)
            except (KeyError, DamagedSnapshot) as problem:
                error, status = snapshot_problem(problem, low, high), 404
    return page(request, "models.html", "models", context | {"error": error}, status)


@router.get("/models/activate")
def confirm_activation(request: Request, version: str = "") -> HTMLResponse:
    models = engine_of(request).models()
    snapshots: list[dict[str, Any]] = models["snapshots"]  # type: ignore[assignment]
    target = next((s for s in snapshots if str(s["version"]) == version), None)
    if version != "latest" and target is None:
        return message(
            request, "models", 404, "No such snapshot", f"There is no snapshot {version!r} on disk."
        )
    context = {"version": version, "target": target, "models": models}
    return page(request, "confirm_activation.html", "models", context)


@router.post("/models/activate")
async def activate(request: Request) -> Response:
    """Pin serving to a snapshot (a rollback), or with ``latest`` release the pin: as
    ``POST /models/{version}/activate``."""
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    version = form.get("version", "")
    try:
        await run_in_threadpool(engine_of(request).activate, version)
    except ClientError as error:
        return message(request, "models", error.status, "Serving did not change", str(error))
    if version == "latest":
        return redirect("/ui/models", done="released")
    return redirect("/ui/models", done="activated", version=version)


# ------------------------------------------------------------------------------ experiments


@router.get("/experiments")
def experiments(request: Request) -> HTMLResponse:
    return _experiments_page(request, experiment_form())


@router.post("/experiments")
async def create_experiment(request: Request) -> Response:
    """Start an experiment from the form, validated by the API's schema: as
    ``POST /experiments``."""
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    body = parse_experiment(form)
    if isinstance(body, str):
        return _experiments_page(request, experiment_form(form), body, 422)
    arms = [arm.model_dump() for arm in body.arms]
    try:
        created = await run_in_threadpool(engine_of(request).create_experiment, body.name, arms)
    except ClientError as error:
        return _experiments_page(request, experiment_form(form), str(error), error.status)
    return redirect("/ui/experiments", done="created", name=created.name)


@router.get("/experiments/stop")
def confirm_stop(request: Request, name: str = "") -> HTMLResponse:
    experiment = engine_of(request).experiments.get(name)
    if experiment is None or not experiment.running:
        return message(
            request, "experiments", 404, "Nothing to stop", f"No experiment {name!r} is running."
        )
    return page(request, "confirm_stop.html", "experiments", {"experiment": experiment})


@router.post("/experiments/stop")
async def stop_experiment(request: Request) -> Response:
    """As ``POST /experiments/{name}/stop``."""
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    try:
        stopped = await run_in_threadpool(engine_of(request).stop_experiment, form.get("name", ""))
    except ClientError as error:
        return message(
            request, "experiments", error.status, "The experiment did not stop", str(error)
        )
    return redirect("/ui/experiments", done="stopped", name=stopped.name)


def _experiments_page(
    request: Request, form: dict[str, object], error: str | None = None, status: int = 200
) -> HTMLResponse:
    context = experiments_page(engine_of(request), dashboard_of(request).history.samples())
    context |= {"form": form, "error": error}
    return page(request, "experiments.html", "experiments", context, status)


# ------------------------------------------------------------------------------ users


@router.get("/users")
async def users(
    request: Request, user: Annotated[str, Query(max_length=MAX_ID_LENGTH)] = "", k: str = ""
) -> HTMLResponse:
    """The user's list now (a preview: not logged), with reasons, propensities and
    exploration flags; how it changed since their latest event; their history."""
    engine = engine_of(request)
    longest = min(MAX_LIST, engine.settings.max_k)
    count = min(max(int(k), 1), longest) if k.isdigit() else min(DEFAULT_K, longest)
    user = user.strip()
    context: dict[str, Any] = {
        "user": user, "k": count, "max_list": longest, "result": None, "history": None,
        "change": None, "titles": {},
    }  # fmt: skip
    if not user:
        return page(request, "users.html", "users", context)
    problem = id_problem(user)
    if problem:
        return page(request, "users.html", "users", context | {"error": f"user {problem}"}, 422)
    history = await anyio.to_thread.run_sync(user_history, dashboard_of(request).log, user)
    context["history"] = history
    try:
        decided = await anyio.to_thread.run_sync(partial(engine.recommend, user, count, log=False))
    except ServiceError as error:  # no model yet
        return page(request, "users.html", "users", context | {"error": str(error)}, error.status)
    explained: dict[str, Any] | None = None
    with anyio.move_on_after(engine.settings.explain_seconds):
        explained = await anyio.to_thread.run_sync(
            engine.explain, decided, limiter=_EXPLAINING, abandon_on_cancel=True
        )
    result: dict[str, Any] = explained or decided.result
    now = [str(entry["item"]) for entry in result["items"]]
    change = list_change(history, now)
    named = {item for entry in history.entries for item in (entry.item, *entry.items) if item}
    named |= {item for entry in result["items"] for item in _reason_items(entry)}
    if change is not None:
        named |= set(change["left"])
    wanted = sorted(named | set(now))
    context |= {
        "result": result, "change": change, "chart": timeline_chart(history),
        "titles": dict(zip(wanted, engine.titles(wanted), strict=True)),
    }  # fmt: skip
    return page(request, "users.html", "users", context)


def _reason_items(entry: dict[str, Any]) -> list[str]:
    return [reason["item"] for reason in entry.get("reasons") or () if reason["item"]]


# ------------------------------------------------------------------------------ items


@router.get("/items")
def items(request: Request, q: Annotated[str, Query(max_length=200)] = "") -> HTMLResponse:
    return _items_page(request, q.strip(), {"item": "", "title": "", "text": "", "categories": ""})


@router.get("/item")
def item(
    request: Request, id: Annotated[str, Query(max_length=MAX_ID_LENGTH)] = ""
) -> HTMLResponse:
    """An item: its catalogue entry, similar items, where the serving model ranks it."""
    engine = engine_of(request)
    try:
        found = engine.item(id)
    except NotFound:
        form = {"item": id, "title": "", "text": "", "categories": ""}
        return _items_page(request, "", form, 404, f"There is no item {id!r}: add it here.")
    similar: list[dict[str, Any]] = []
    note = None
    try:
        similar = engine.similar(id, 10)["items"]  # type: ignore[assignment]
    except ServiceError as error:
        note = str(error)
    model = engine.learner.current.model
    categories: list[str] = found["categories"]  # type: ignore[assignment]
    form = {"item": id, "title": str(found["title"]), "text": str(found["text"]),
            "categories": ", ".join(categories)}  # fmt: skip
    context = {
        "item": found, "similar": similar, "similar_note": note, "form": form,
        "placed": None if model is None else placement(model, id),
    }  # fmt: skip
    return page(request, "item.html", "items", context)


@router.post("/items")
async def save_item(request: Request) -> Response:
    """Add or replace an item, validated by the API's schema: as ``PUT /items/{item_id}``."""
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    fields = {name: form.get(name, "") for name in ("item", "title", "text", "categories")}
    try:
        item = _ID.validate_python(fields["item"].strip())
        body = ItemIn.model_validate({
            "title": fields["title"].strip(), "text": fields["text"].strip(),
            "categories": [c.strip() for c in fields["categories"].split(",") if c.strip()],
        })  # fmt: skip
    except ValidationError as error:
        problem = "; ".join(
            f"{'.'.join(map(str, p['loc'])) or 'item id'}: {p['msg']}" for p in error.errors()
        )
        return _items_page(request, "", fields, 422, problem)
    engine = engine_of(request)
    await run_in_threadpool(engine.put_item, item, body.title, body.text, body.categories)
    return redirect("/ui/item", id=item, done="saved")


def _items_page(
    request: Request, query: str, form: dict[str, str], status: int = 200, error: str | None = None
) -> HTMLResponse:
    engine = engine_of(request)
    catalog = engine.wording().catalog
    assert catalog is not None  # the engine's wording always has one
    found, matching = search(catalog, query)
    model = engine.learner.current.model
    if model is not None and found:
        known = model.items_.lookup([row["item"] for row in found]) >= 0
        for row, flag in zip(found, known.tolist(), strict=True):
            row["recommendable"] = flag
    context = {"q": query, "found": found, "matching": matching, "form": form, "error": error}
    return page(request, "items.html", "items", context, status)


# ------------------------------------------------------------------------------ data


@router.get("/data")
def data(
    request: Request,
    reason: Annotated[str, Query(max_length=100)] = "",
    source: Annotated[str, Query(max_length=1_000)] = "",
    q: Annotated[str, Query(max_length=200)] = "",
    page_number: Annotated[str, Query(alias="page", max_length=9)] = "1",
) -> HTMLResponse:
    """The quarantine, filtered, and the ingestion history."""
    log = dashboard_of(request).log
    number = int(page_number) if page_number.isdigit() else 1
    context = {
        "rejected": quarantine(log, reason, source, q, number),
        "appends": ingestion(log),
        "filters": {"reason": reason, "source": source, "q": q},
    }
    return page(request, "data.html", "data", context)


# ------------------------------------------------------------------------------ signing in


@router.get("/login")
def login_page(request: Request, next: str = "/ui", expired: str = "") -> HTMLResponse:
    notice = "Sign in to do that." if expired else None
    return page(request, "login.html", "login", {"next": local_target(next), "notice": notice})


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the token typed in; if it is the service's, start a session."""
    form = await read_form(request, session=False)
    if isinstance(form, Response):
        return form
    signer, target = signer_of(request), local_target(form.get("next", "/ui"))
    if signer.token is None:
        return redirect(target)
    if not signer.accepts_token(form.get("token", "")):
        context = {"next": target, "error": "That is not the service's token."}
        return page(request, "login.html", "login", context, 401)
    response = redirect(target, done="signed_in")
    response.set_cookie(
        SESSION_COOKIE, signer.session(browser_of(request) or ""), max_age=SESSION_SECONDS,
        **cookie_options(request),
    )  # fmt: skip
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await read_form(request, session=False)
    if isinstance(form, Response):
        return form
    response = redirect("/ui", done="signed_out")
    response.delete_cookie(SESSION_COOKIE, **cookie_options(request))
    return response
