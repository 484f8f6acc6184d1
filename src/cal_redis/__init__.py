"""cal-redis: typed async access to the Callable platform's shared data.

An in-process L1 (Cython LRU, byte-bounded, TTL per namespace) over Redis/Valkey
(L2), kept in sync across instances by pub/sub. Start with :class:`CallableCache`.
"""

from __future__ import annotations

from ._fast import EXTENSION_ACTIVE
from .api.warming import NamespaceWarm, WarmResult
from .cache import CallableCache
from .config import CacheConfig, EntryWeight, NamespaceBudget, WarmPlan
from .embedded import EmbeddedRedis, EmbeddedRedisError
from .errors import (
    BackupFormatError,
    CalRedisError,
    ClosedError,
    ConfigurationError,
    ConnectionError,
    NotFoundError,
    RedisError,
    SerializationError,
    TimeoutError,
    ValidationError,
)
from .keys import KeyBuilder
from .models import (
    Account,
    Address,
    AgentState,
    AgentStatus,
    Asset,
    Conversation,
    Ddi,
    Device,
    Event,
    FlowState,
    Hook,
    Proxy,
    QueueMeta,
    Region,
    SessionData,
    Trunk,
    User,
    WsConnection,
)
from .sync import EventStream, SyncState

__version__ = "0.1.0"

__all__ = (
    "EXTENSION_ACTIVE",
    "Account",
    "Address",
    "AgentState",
    "AgentStatus",
    "Asset",
    "BackupFormatError",
    "CacheConfig",
    "CalRedisError",
    "CallableCache",
    "ClosedError",
    "ConfigurationError",
    "ConnectionError",
    "Conversation",
    "Ddi",
    "Device",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "EntryWeight",
    "Event",
    "EventStream",
    "FlowState",
    "Hook",
    "KeyBuilder",
    "NamespaceBudget",
    "NamespaceWarm",
    "NotFoundError",
    "Proxy",
    "QueueMeta",
    "RedisError",
    "Region",
    "SerializationError",
    "SessionData",
    "SyncState",
    "TimeoutError",
    "Trunk",
    "User",
    "ValidationError",
    "WarmPlan",
    "WarmResult",
    "WsConnection",
    "__version__",
)
