"""Dependencies the routes share: the engine, and the bearer token of write endpoints."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lifelong_rec.service.engine import Engine

_bearer = HTTPBearer(auto_error=False, description="the service's token (LIFELONG_REC_TOKEN)")


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def require_token(
    engine: EngineDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Write endpoints need ``Authorization: Bearer <token>`` when a token is configured."""
    expected = engine.settings.token
    if expected is None:
        return
    if credentials is None or not hmac.compare_digest(
        credentials.credentials.encode(), expected.encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


Writer = Depends(require_token)
