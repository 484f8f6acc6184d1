"""Sync: the event subscriber, the dispatcher that applies events to L1, and the app
event streams."""

from __future__ import annotations

from .dispatch import ACTIONS, MAX_EVENT_BYTES, TENANT_INVALIDATE, Dispatcher
from .streams import EventHandler, EventStream, Hub
from .subscriber import Subscriber, SyncState

__all__ = (
    "ACTIONS",
    "MAX_EVENT_BYTES",
    "TENANT_INVALIDATE",
    "Dispatcher",
    "EventHandler",
    "EventStream",
    "Hub",
    "Subscriber",
    "SyncState",
)
