"""The platform's domain types as frozen msgspec Structs (the JSON wire format).

Values are UTF-8 JSON objects with snake_case fields. ``id`` (or the natural key)
is required; every other field has a default, so a reader fills what an older
writer did not send and ignores what a newer writer added. Timestamps are integer
milliseconds since the Unix epoch (UTC). Frozen instances can be shared safely
between callers of the L1 cache.

Example::

    >>> import msgspec
    >>> msgspec.json.decode(b'{"id": "u1", "email": "a@b.c", "future": 1}', type=User).email
    'a@b.c'
"""

from __future__ import annotations

import enum
import time
from typing import Any

import msgspec

__all__ = (
    "Model",
    "Region",
    "Proxy",
    "Account",
    "User",
    "Device",
    "Ddi",
    "Trunk",
    "Hook",
    "Asset",
    "Address",
    "AgentState",
    "AgentStatus",
    "SessionData",
    "QueueMeta",
    "Conversation",
    "FlowState",
    "WsConnection",
    "Event",
    "now_ms",
)


def now_ms() -> int:
    """Current time as integer milliseconds since the epoch (UTC)."""
    return time.time_ns() // 1_000_000


def now_ms_us() -> tuple[int, int]:
    """The current time, read once, as (milliseconds, microseconds) since the epoch
    (UTC): an event's ``ts`` and ``ts_us``."""
    ns = time.time_ns()
    return ns // 1_000_000, ns // 1_000


class Model(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Base of every stored value: frozen, keyword-only, unknown fields ignored."""


class Region(Model, frozen=True, kw_only=True):
    """A telephony region (media/SIP point of presence). Idents: ``code``, ``name``."""

    id: str
    code: str = ""
    name: str = ""
    country: str = ""
    timezone: str = "UTC"
    enabled: bool = True
    created_at: int = 0
    updated_at: int = 0


class Proxy(Model, frozen=True, kw_only=True):
    """A SIP proxy / edge node in a region."""

    id: str
    region_id: str = ""
    host: str = ""
    port: int = 5060
    transport: str = "udp"
    enabled: bool = True
    created_at: int = 0
    updated_at: int = 0


class Account(Model, frozen=True, kw_only=True):
    """An account (tenant) summary. Idents: ``domain``, ``code``."""

    id: str
    name: str = ""
    domain: str = ""
    code: str = ""
    region_id: str = ""
    plan: str = ""
    enabled: bool = True
    max_users: int = 0
    created_at: int = 0
    updated_at: int = 0


class User(Model, frozen=True, kw_only=True):
    """A platform user. Idents: ``email``, ``username``, ``extension``."""

    id: str
    account_id: str = ""
    email: str = ""
    username: str = ""
    name: str = ""
    extension: str = ""
    role: str = "user"
    enabled: bool = True
    created_at: int = 0
    updated_at: int = 0


class Device(Model, frozen=True, kw_only=True):
    """A SIP device of an account. Idents: ``sip_username``, ``mac``."""

    id: str
    account_id: str = ""
    user_id: str = ""
    name: str = ""
    sip_username: str = ""
    mac: str = ""
    model: str = ""
    enabled: bool = True
    created_at: int = 0
    updated_at: int = 0


class Ddi(Model, frozen=True, kw_only=True):
    """A direct-dial number (E.164 in ``id``) and where it routes."""

    id: str
    account_id: str = ""
    description: str = ""
    destination_type: str = ""
    destination_id: str = ""
    enabled: bool = True
    created_at: int = 0
    updated_at: int = 0


class Trunk(Model, frozen=True, kw_only=True):
    """A SIP trunk of an account."""

    id: str
    account_id: str = ""
    name: str = ""
    host: str = ""
    port: int = 5060
    ips: list[str] = msgspec.field(default_factory=list)
    enabled: bool = True
    created_at: int = 0
    updated_at: int = 0


class Hook(Model, frozen=True, kw_only=True):
    """A webhook subscription of an account."""

    id: str
    account_id: str = ""
    url: str = ""
    events: list[str] = msgspec.field(default_factory=list)
    secret: str = ""
    enabled: bool = True
    created_at: int = 0
    updated_at: int = 0


class Asset(Model, frozen=True, kw_only=True):
    """A stored media asset (prompt, music on hold, ...)."""

    id: str
    account_id: str = ""
    name: str = ""
    kind: str = ""
    url: str = ""
    content_type: str = ""
    size: int = 0
    created_at: int = 0
    updated_at: int = 0


class Address(Model, frozen=True, kw_only=True):
    """A postal address (emergency services location)."""

    id: str
    account_id: str = ""
    line1: str = ""
    line2: str = ""
    city: str = ""
    region: str = ""
    postcode: str = ""
    country: str = ""
    emergency: bool = False
    created_at: int = 0
    updated_at: int = 0


class AgentState(str, enum.Enum):
    """Presence of a contact-centre agent."""

    OFFLINE = "offline"
    AVAILABLE = "available"
    BUSY = "busy"
    AWAY = "away"
    WRAP_UP = "wrap_up"


class AgentStatus(Model, frozen=True, kw_only=True):
    """An agent's status. Its set memberships (registered/available/connected) follow it."""

    user_id: str
    account_id: str = ""
    name: str = ""
    status: AgentState = AgentState.OFFLINE
    registered: bool = False
    connected: bool = False
    updated_at: int = 0


class SessionData(Model, frozen=True, kw_only=True):
    """A user session, stored with an EXPIRE."""

    id: str
    account_id: str = ""
    user_id: str = ""
    created_at: int = 0
    expires_at: int = 0
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class QueueMeta(Model, frozen=True, kw_only=True):
    """Metadata of a call/work queue."""

    name: str
    account_id: str = ""
    description: str = ""
    strategy: str = "fifo"
    max_size: int = 0
    created_at: int = 0
    updated_at: int = 0


class Conversation(Model, frozen=True, kw_only=True):
    """A conversation (call, chat) in progress or recently ended."""

    id: str
    account_id: str = ""
    channel: str = ""
    status: str = ""
    participants: list[str] = msgspec.field(default_factory=list)
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


class FlowState(Model, frozen=True, kw_only=True):
    """The state of a call-flow execution (cached in L1 for 4 hours)."""

    id: str
    account_id: str = ""
    state: str = ""
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    updated_at: int = 0


class WsConnection(Model, frozen=True, kw_only=True):
    """A websocket connection of an agent, routed through a node."""

    id: str
    account_id: str = ""
    user_id: str = ""
    node_id: str = ""
    connected_at: int = 0


class Event(Model, frozen=True, kw_only=True, omit_defaults=True):
    """A change event published on ``cal:events`` or ``cal:account:{a}:events``.

    ``type`` is e.g. ``UserUpdate``; ``data``, when present, is the full new object
    as raw JSON (decoded lazily into the entity's type by the subscriber); an empty
    ``Raw`` means absent. Fields left at their default are omitted on the wire.
    ``ts`` is in milliseconds since the epoch; ``ts_us``, optional, is the same
    instant in microseconds (the events this library publishes carry both; the
    event-lag metric uses ``ts_us`` and falls back to ``ts``). ``ids`` is the batch of
    ids of an ``<Kind>Invalidate`` event (docs/wire-format.md, "Events"). ``log_id``,
    optional, is the id of the event's entry in its event log (a Redis Stream;
    docs/wire-format.md, "Event log"), set by the script that wrote and published it.
    """

    type: str
    id: str = ""
    account_id: str | None = None
    origin: str = ""
    ts: int = 0
    ts_us: int = 0
    data: msgspec.Raw = msgspec.Raw(b"")
    ids: tuple[str, ...] = ()
    log_id: str = ""

    @property
    def has_data(self) -> bool:
        """True when the event carries an object (``data`` present and not ``null``)."""
        raw = self.data
        return len(raw) > 0 and bytes(raw) != b"null"
