"""The HTTP service: FastAPI under uvicorn, a durable event log, a background learner,
hot-swapped snapshots, experiments and Prometheus metrics (``lifelong-rec serve``)."""

from lifelong_rec.service.app import create_app
from lifelong_rec.service.settings import Settings

__all__ = ["Settings", "create_app"]
