"""Durable storage: the append-only SQLite event log with consumer offsets, ids and catalog."""

from lifelong_rec.store.eventlog import FORMAT_VERSION, Appended, EventLog

__all__ = ["FORMAT_VERSION", "Appended", "EventLog"]
