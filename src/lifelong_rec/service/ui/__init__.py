"""The service's web dashboard at ``/ui``: server-rendered pages over the engine's real state."""

from lifelong_rec.service.ui.auth import Signer, WriteGate
from lifelong_rec.service.ui.pages import install, router

__all__ = ["Signer", "WriteGate", "install", "router"]
