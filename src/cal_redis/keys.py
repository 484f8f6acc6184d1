"""Every Redis key and channel name of cal-redis, and the id validation behind them.

This module is the only place that formats a key. The layout is a public contract
shared with services in other languages (docs/wire-format.md). Each builder
validates the ids it is given *before* any I/O and raises
:class:`~cal_redis.errors.ValidationError` naming the argument; an id is never
escaped or silently changed.

Two key styles: standalone (``cal:account:acc42:devices``, ``cal:user:idents``) and
cluster, where every key a write script touches together shares one Redis Cluster
slot: the account id is a hash tag, so one account's keys share a slot
(``cal:account:{acc42}:devices``), and each ident hash is tagged with its entity
table's name, so it lives in the table's slot (``cal:user:idents:{cal:users}``).
Entity table names are the same in both styles. The style in use is recorded in
Redis under :data:`LAYOUT_KEY` (see :mod:`cal_redis.layout`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from .errors import ValidationError

__all__ = (
    "LAYOUT_KEY",
    "KEY_STYLES",
    "MAX_ID_BYTES",
    "MAX_IDENT_BYTES",
    "KeyBuilder",
    "validate_id",
    "validate_ids",
    "validate_ident",
    "canonical_ip",
)

MAX_ID_BYTES: Final = 256
MAX_IDENT_BYTES: Final = 1024
PREFIX: Final = "cal:"
#: A string key holding the key style of the data (``standalone`` or ``cluster``).
LAYOUT_KEY: Final = "cal:meta:layout"
#: The key styles, as stored under :data:`LAYOUT_KEY`.
KEY_STYLES: Final = ("standalone", "cluster")

# Separators, glob characters, hash-tag braces, whitespace and control characters.
_BAD_ID = re.compile(r"[:*?\[\]{}\s\x00-\x1f\x7f-\x9f]")
_BAD_PRINTABLE = " :*?[]{}"  # the forbidden characters that str.isprintable() allows
# Every ASCII character an id may hold (printable, no space, none of _BAD_PRINTABLE).
_ID_ASCII: Final = bytes(range(0x21, 0x7F)).translate(None, _BAD_PRINTABLE.encode())
_BAD_IDENT = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def validate_id(value: object, argument: str) -> str:
    """Return ``value`` if it is a valid id for a key segment, else raise ValidationError.

    Valid: a non-empty ``str`` of at most 256 UTF-8 bytes without ``: * ? [ ] { }``,
    whitespace or control characters.
    """
    if type(value) is not str:
        raise ValidationError(argument, f"expected str, got {type(value).__name__}")
    if not value:
        raise ValidationError(argument, "must not be empty")
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise ValidationError(argument, f"longer than {MAX_ID_BYTES} bytes")
    bad = _BAD_ID.search(value)
    if bad is not None:
        raise ValidationError(argument, f"contains forbidden character {bad.group()!r}")
    return value


def validate_ids(values: list[object], argument: str) -> None:
    """Validate many ids at once; the error names ``argument[i]`` of the first bad one.

    Valid ids never contain a forbidden character, so a few C-speed scans of their
    concatenation clear a whole batch: for ASCII (``isascii`` is O(1)), deleting every
    allowed byte must leave nothing; otherwise ``isprintable`` rejects control
    characters and every whitespace but the ASCII space, and the remaining forbidden
    characters are searched for (a regex pass was ~20x slower). Only a failing batch is
    checked id by id.
    """
    try:
        joined = "".join(values)  # type: ignore[arg-type]
    except TypeError:
        joined = None
    if (
        joined is not None
        and all(values)
        and max(map(len, values), default=0) <= MAX_ID_BYTES // 4  # type: ignore[arg-type]
        and (
            not joined.encode("ascii").translate(None, _ID_ASCII)
            if joined.isascii()
            else joined.isprintable() and not any(ch in joined for ch in _BAD_PRINTABLE)
        )
    ):
        return
    for i, value in enumerate(values):
        validate_id(value, f"{argument}[{i}]")


def validate_ident(value: object, argument: str) -> str:
    """Validate an ident stored only as a hash field (email, username, MAC...).

    Idents may hold what a hash field can (``@``, ``:``, spaces), but must be a
    non-empty ``str`` of at most 1024 UTF-8 bytes without control characters.
    """
    if type(value) is not str:
        raise ValidationError(argument, f"expected str, got {type(value).__name__}")
    if not value:
        raise ValidationError(argument, "must not be empty")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_IDENT_BYTES:
        raise ValidationError(argument, f"longer than {MAX_IDENT_BYTES} bytes")
    bad = _BAD_IDENT.search(value)
    if bad is not None:
        raise ValidationError(argument, f"contains control character {bad.group()!r}")
    return value


def canonical_ip(value: object, argument: str = "trunk_ip") -> str:
    """Parse an IPv4/IPv6 address and return its canonical text form.

    ``2001:0db8::0001`` becomes ``2001:db8::1``; zone ids (``%eth0``) are refused.
    """
    if type(value) is not str:
        raise ValidationError(argument, f"expected str, got {type(value).__name__}")
    if "%" in value:
        raise ValidationError(argument, "zone ids are not allowed in a trunk IP")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValidationError(argument, f"{value!r} is not an IPv4 or IPv6 address") from None


class KeyBuilder:
    """Builds every key and channel of the layout, in the standalone or the cluster style.

    Example::

        >>> KeyBuilder().devices("acc42")
        'cal:account:acc42:devices'
        >>> KeyBuilder(cluster=True).devices("acc42")
        'cal:account:{acc42}:devices'
        >>> KeyBuilder(cluster=True).USER_IDENTS
        'cal:user:idents:{cal:users}'
    """

    __slots__ = ("ACCOUNT_IDENTS", "REGION_IDENTS", "USER_IDENTS", "cluster")

    # Global keys (constants: no id goes into them, the same in both styles).
    REGIONS: Final = "cal:regions"
    PROXIES: Final = "cal:proxies"
    ACCOUNTS: Final = "cal:accounts"
    USERS: Final = "cal:users"
    WS_CONNECTIONS: Final = "cal:ws:connections"
    EVENTS: Final = "cal:events"
    LAYOUT: Final = LAYOUT_KEY
    #: The global entity tables, each with an event log (:meth:`table_log`).
    TABLES: Final = ("cal:regions", "cal:proxies", "cal:accounts", "cal:users")

    def __init__(self, cluster: bool = False) -> None:
        self.cluster = cluster
        #: The ident hashes (ident -> id); in the cluster style in their table's slot.
        self.REGION_IDENTS = self.ident_hash("cal:region:idents", self.REGIONS)
        self.ACCOUNT_IDENTS = self.ident_hash("cal:account:idents", self.ACCOUNTS)
        self.USER_IDENTS = self.ident_hash("cal:user:idents", self.USERS)

    @property
    def style(self) -> str:
        """``"cluster"`` or ``"standalone"`` (the value stored under :data:`LAYOUT_KEY`)."""
        return "cluster" if self.cluster else "standalone"

    def ident_hash(self, name: str, table: str) -> str:
        """The ident hash ``name`` of entity table ``table`` in this style."""
        return f"{name}:{{{table}}}" if self.cluster else name

    def global_ident_hashes(self) -> tuple[str, str, str]:
        """The three global ident hashes (regions, accounts, users) in this style."""
        return (self.REGION_IDENTS, self.ACCOUNT_IDENTS, self.USER_IDENTS)

    # -- account scope ---------------------------------------------------------------
    def account(self, account_id: str) -> str:
        """The prefix shared by every key of one account, ending in ``:``."""
        validate_id(account_id, "account_id")
        if self.cluster:
            return f"cal:account:{{{account_id}}}:"
        return f"cal:account:{account_id}:"

    def account_events_pattern(self) -> str:
        """PSUBSCRIBE pattern matching every account's event channel."""
        return "cal:account:*:events"

    def account_id_from_channel(self, channel: str) -> str | None:
        """The account id of an account event channel, or None if it is not one."""
        if not (channel.startswith("cal:account:") and channel.endswith(":events")):
            return None
        inner = channel[len("cal:account:") : -len(":events")]
        if self.cluster or (inner.startswith("{") and inner.endswith("}")):
            inner = inner[1:-1] if inner.startswith("{") and inner.endswith("}") else inner
        try:
            return validate_id(inner, "account_id")
        except ValidationError:
            return None

    def devices(self, account_id: str) -> str:
        return self.account(account_id) + "devices"

    def device_idents(self, account_id: str) -> str:
        return self.account(account_id) + "device:idents"

    def ddis(self, account_id: str) -> str:
        return self.account(account_id) + "ddis"

    def trunks(self, account_id: str) -> str:
        return self.account(account_id) + "trunks"

    def hooks(self, account_id: str) -> str:
        return self.account(account_id) + "hooks"

    def assets(self, account_id: str) -> str:
        return self.account(account_id) + "assets"

    def addresses(self, account_id: str) -> str:
        return self.account(account_id) + "addresses"

    def agent_status(self, account_id: str, user_id: str) -> str:
        return self.account(account_id) + "agent:status:" + validate_id(user_id, "user_id")

    def agents_by_user(self, account_id: str) -> str:
        return self.account(account_id) + "agents:by_user"

    def agents_registered(self, account_id: str) -> str:
        return self.account(account_id) + "agents:registered"

    def agents_available(self, account_id: str) -> str:
        return self.account(account_id) + "agents:available"

    def agents_connected(self, account_id: str) -> str:
        return self.account(account_id) + "agents:connected"

    def session(self, account_id: str, session_id: str) -> str:
        return self.account(account_id) + "session:" + validate_id(session_id, "session_id")

    def sessions_active(self, account_id: str) -> str:
        return self.account(account_id) + "sessions:active"

    def queue(self, account_id: str, queue_name: str) -> str:
        return self.account(account_id) + "queue:" + validate_id(queue_name, "queue_name")

    def queues_meta(self, account_id: str) -> str:
        return self.account(account_id) + "queues:meta"

    def conversation(self, account_id: str, conversation_id: str) -> str:
        cid = validate_id(conversation_id, "conversation_id")
        return self.account(account_id) + "conversation:" + cid

    def flow_state(self, account_id: str, flow_id: str) -> str:
        return self.account(account_id) + "flow_state:" + validate_id(flow_id, "flow_id")

    def account_events(self, account_id: str) -> str:
        return self.account(account_id) + "events"

    def account_log(self, account_id: str) -> str:
        """The event log (a Redis Stream) of the account's channel: every event of
        account-scoped data (devices, flow states, ``TenantInvalidate``...)."""
        return self.account(account_id) + "log"

    def table_log(self, table: str) -> str:
        """The event log (a Redis Stream) of a global entity table (``cal:users`` ->
        ``cal:log:users``; in the cluster style tagged into the table's slot:
        ``cal:log:users:{cal:users}``)."""
        if table not in self.TABLES:
            raise ValidationError("table", f"{table!r} is not an entity table with a log")
        return self.ident_hash("cal:log:" + table[len(PREFIX):], table)

    def ws_connections(self, account_id: str) -> str:
        """Addition (not in the seed): hash connection_id → user_id of the account's
        websocket connections, the per-account index of ``cal:ws:connections``."""
        return self.account(account_id) + "ws:connections"

    # -- global keys with an id ------------------------------------------------------
    def trunk_ip(self, trunk_ip: str) -> str:
        """``cal:trunk:{ip}`` with the IP in canonical form (IPv6 keeps its colons)."""
        return "cal:trunk:" + canonical_ip(trunk_ip)
