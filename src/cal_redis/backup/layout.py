"""The key layout as the backup tools see it: every key family, read off
:class:`~cal_redis.keys.KeyBuilder` itself, in both key styles.

There is no list of key names here. :func:`families` calls every public builder of a
``KeyBuilder`` (plain and cluster style) with placeholder ids and turns each key it
builds into an exact pattern, so a family added to the builder (a new hash, a
marker key, a hash-tagged ident hash of the cluster style) is recognised as soon as
it exists. A ``cal:`` key that no family matches is still backed up, by its Redis
type; only tenant filtering needs to know whose a key is.

Tenant filtering (:meth:`Layout.owner`) uses only those exact patterns: a key is
account A's when an account-scoped family matches it with ``account_id == A``, or,
for a key no family knows, when it starts with ``KeyBuilder.account(A)`` and is not
a global family. A prefix glob is never trusted: an account named ``idents`` does
not own ``cal:account:idents``. The entries of shared (global) tables that belong to
a tenant are picked field by field by :class:`SharedRule`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final

import msgspec

from ..api.cache_first import ENTITY_SPECS
from ..api.flow_states import FLOW_STATE
from ..api.trunk_ip import TRUNK_IP
from ..errors import ConfigurationError, ValidationError
from ..keys import PREFIX, KeyBuilder, canonical_ip, validate_id

__all__ = ("Family", "Layout", "SharedRule", "families", "glob_escape")

#: Placeholders for the builders' parameters: valid ids that no real key contains.
_ID_SENTINEL: Final = "zQ{i}xQz"
_IP_SENTINEL: Final = "192.0.2.{i}"  # TEST-NET-1: for parameters that must be an IP
_ID_GROUP: Final = r"[^\s:*?\[\]{}]+"
_IP_GROUP: Final = r"[0-9A-Fa-f:.]+"


@dataclass(frozen=True, slots=True)
class Family:
    """One key family: keys built by one ``KeyBuilder`` attribute in one style."""

    #: The builder attribute (``"devices"``, ``"USERS"``, ``"session"``...).
    name: str
    #: ``"plain"``, ``"cluster"``, or ``"both"`` when the styles build the same key.
    style: str
    #: The builder's parameters (``("account_id", "session_id")``); empty: one key.
    params: tuple[str, ...]
    #: The key with ``{param}`` placeholders, e.g. ``cal:account:{account_id}:devices``.
    template: str
    #: The exact pattern of the family's keys.
    pattern: re.Pattern[str]
    #: Parameters that are IP addresses (canonical form).
    ip_params: tuple[str, ...] = ()

    @property
    def scoped(self) -> bool:
        """True for an account's own keys."""
        return "account_id" in self.params

    def match(self, key: str) -> dict[str, str] | None:
        """The parameters of ``key`` if it is one of this family's keys, else None."""
        m = self.pattern.fullmatch(key)
        if m is None:
            return None
        found = m.groupdict()
        try:
            for name, value in found.items():
                if name in self.ip_params:
                    if canonical_ip(value, name) != value:
                        return None
                else:
                    validate_id(value, name)
        except ValidationError:
            return None
        return found


def _build(kb: KeyBuilder, name: str, attr: Any) -> tuple[str, tuple[str, ...], tuple[str, ...]] | None:
    """(key with sentinels, parameter names, IP parameters) of one builder attribute."""
    if isinstance(attr, str):
        return attr, (), ()
    if not callable(attr):
        return None
    try:
        params = inspect.signature(attr).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return None
    names = tuple(p.name for p in params)
    if any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is not p.empty
           for p in params):
        return None
    ips: set[str] = set()
    for _ in range(len(names) + 1):
        args = [(_IP_SENTINEL if n in ips else _ID_SENTINEL).format(i=i + 1)
                for i, n in enumerate(names)]
        try:
            value = attr(*args)
        except ValidationError as err:
            if err.argument in names and err.argument not in ips:
                ips.add(err.argument)
                continue
            return None
        except Exception:  # not a key builder (e.g. a channel parser)
            return None
        return (value, names, tuple(n for n in names if n in ips)) if isinstance(value, str) else None
    return None


def families(cluster: bool) -> list[Family]:
    """Every key family of one key style, read off a ``KeyBuilder(cluster=cluster)``.

    Skipped: attributes that build no ``cal:`` key (flags, prefixes ending in ``:``,
    glob patterns), the pub/sub channels (never keys) and the key-style marker
    ``cal:meta:layout`` (metadata, backed up as any other ``cal:`` key by its type).
    """
    kb = KeyBuilder(cluster=cluster)
    style = "cluster" if cluster else "plain"
    channel_glob = kb.account_events_pattern()
    out: list[Family] = []
    for name in sorted(dir(kb)):
        if name.startswith("_") or name == "LAYOUT":  # the key-style marker: metadata
            continue
        built = _build(kb, name, getattr(kb, name))
        if built is None:
            continue
        value, params, ips = built
        if (not value.startswith(PREFIX) or value.endswith(":") or "*" in value
                or value == kb.EVENTS or fnmatchcase(value, channel_glob)):
            continue
        regex = re.escape(value)
        template = value
        for i, param in enumerate(params):
            sentinel = (_IP_SENTINEL if param in ips else _ID_SENTINEL).format(i=i + 1)
            group = _IP_GROUP if param in ips else _ID_GROUP
            regex = regex.replace(re.escape(sentinel), f"(?P<{param}>{group})", 1)
            template = template.replace(sentinel, "{" + param + "}", 1)
        out.append(Family(name, style, params, template, re.compile(regex), ips))
    return out


def glob_escape(text: str) -> str:
    """``text`` with Redis glob characters escaped (for ``SCAN MATCH``)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


class _Owner(msgspec.Struct):
    account_id: Any = None


_owner_decoder = msgspec.json.Decoder(_Owner)


def json_account(raw: bytes) -> str | None:
    """The ``account_id`` of a stored JSON object, or None (not an object, or none)."""
    try:
        owner = _owner_decoder.decode(raw).account_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return owner if isinstance(owner, str) and owner else None


@dataclass(frozen=True, slots=True)
class SharedRule:
    """How a tenant's entries of one shared (global) key are picked, entry by entry.

    ``how`` is ``"field"`` (the field is the account id: ``cal:accounts``),
    ``"value"`` (the value is the account id: account idents, trunk IPs),
    ``"json"`` (the value is a JSON object whose ``account_id`` is the account:
    users, websocket connections, any other global hash), or ``"ident-of"`` (the value
    is the id of an entity of table ``of`` that belongs to the account: user idents).
    """

    how: str
    of: str | None = None
    #: Tables whose owned ids an ``ident-of`` rule needs are read first (lower first).
    order: int = 1


class Layout:
    """The families of both key styles, and who owns a key or an entry of a shared key."""

    def __init__(self) -> None:
        plain, cluster = families(False), families(True)
        exact: dict[str, Family] = {}
        patterned: list[Family] = []
        cluster_templates = {f.template: f for f in cluster}
        seen: set[str] = set()
        for fam in plain + cluster:
            if fam.template in seen:
                continue
            seen.add(fam.template)
            both = fam.style == "plain" and cluster_templates.get(fam.template) is not None
            if both:
                fam = Family(fam.name, "both", fam.params, fam.template, fam.pattern, fam.ip_params)
            if fam.params:
                patterned.append(fam)
            else:
                exact[fam.template] = fam
        self.exact = exact
        self.patterned = patterned
        self._prefixes = [KeyBuilder(cluster=c).account(_ID_SENTINEL.format(i=1)) for c in (False, True)]
        self._prefix_patterns = [
            re.compile(re.escape(p).replace(re.escape(_ID_SENTINEL.format(i=1)),
                                            f"(?P<account_id>{_ID_GROUP})", 1))
            for p in self._prefixes
        ]
        self.rules = self._shared_rules()
        self.kinds = self._l1_kinds()

    @property
    def all(self) -> list[Family]:
        """Every family, exact keys first."""
        return [*self.exact.values(), *self.patterned]

    def classify(self, key: str) -> tuple[Family | None, dict[str, str]]:
        """The family of ``key`` and its parameters; (None, {}) for an unknown key."""
        fam = self.exact.get(key)
        if fam is not None:
            return fam, {}
        for fam in self.patterned:
            found = fam.match(key)
            if found is not None:
                return fam, found
        return None, {}

    def family_name(self, key: str) -> str:
        """The family's name for summaries (``"other"`` for an unknown key)."""
        fam, _ = self.classify(key)
        return "other" if fam is None else fam.name

    def owner(self, key: str) -> str | None:
        """The account that owns the whole of ``key``, or None for a shared key.

        An account-scoped family's ``account_id``; for a key no family knows, the
        account whose ``KeyBuilder.account()`` prefix it starts with (either style).
        """
        fam, found = self.classify(key)
        if fam is not None:
            return found.get("account_id")
        for pattern in self._prefix_patterns:
            m = pattern.match(key)
            if m is not None:
                try:
                    return validate_id(m.group("account_id"), "account_id")
                except ValidationError:
                    return None
        return None

    def _key_family(self, key: str) -> Family | None:
        return self.classify(key)[0]

    def _shared_rules(self) -> dict[str, SharedRule]:
        """Rules of the shared keys a tenant has entries in, by family template; every
        other global hash gets the ``json`` rule (:meth:`shared_rule`)."""
        rules: dict[str, SharedRule] = {}
        for cluster in (False, True):
            kb = KeyBuilder(cluster=cluster)
            for spec in ENTITY_SPECS.values():
                if spec.scoped:
                    continue
                table = spec.hash_key(kb, None)
                idents = spec.idents_key(kb, None) if spec.idents_key else None
                if spec.tenant_field == "id":
                    rules[table] = SharedRule("field", order=0)
                    if idents:
                        rules[idents] = SharedRule("value")
                elif spec.tenant_field in spec.model.__struct_fields__:
                    rules[table] = SharedRule("json", order=0)
                    if idents:
                        rules[idents] = SharedRule("ident-of", table)
            trunk = self._key_family(kb.trunk_ip(_IP_SENTINEL.format(i=1)))
            if trunk is not None and TRUNK_IP.tenant_of is not None:
                rules[trunk.template] = SharedRule("value")
        return rules

    def shared_rule(self, key: str, redis_type: str) -> SharedRule | None:
        """How a tenant's entries of the shared ``key`` are picked (None: it holds none)."""
        fam = self._key_family(key)
        rule = self.rules.get(key if fam is None else fam.template)
        if rule is not None:
            return rule
        if redis_type == "hash":
            return SharedRule("json")
        return None

    def _l1_kinds(self) -> dict[str, tuple[str, bool]]:
        """Family template -> (event kind, account-scoped) of the families an L1
        namespace caches: what a restore announces with ``<Kind>Sync``."""
        out: dict[str, tuple[str, bool]] = {}
        sentinel = _ID_SENTINEL.format(i=1)
        for cluster in (False, True):
            kb = KeyBuilder(cluster=cluster)
            built: list[tuple[str, str, bool]] = []
            for spec in ENTITY_SPECS.values():
                account = sentinel if spec.scoped else None
                built.append((spec.hash_key(kb, account), spec.kind, spec.scoped))
                if spec.idents_key is not None:
                    built.append((spec.idents_key(kb, account), spec.kind, spec.scoped))
            built.append((kb.trunk_ip(_IP_SENTINEL.format(i=1)), TRUNK_IP.kind, TRUNK_IP.scoped))
            built.append((kb.flow_state(sentinel, _ID_SENTINEL.format(i=2)), FLOW_STATE.kind,
                          FLOW_STATE.scoped))
            for key, kind, scoped in built:
                fam = self._key_family(key)
                if fam is not None:
                    out[fam.template] = (kind, scoped)
        return out

    def l1_kind(self, key: str) -> tuple[str, str | None, bool] | None:
        """(event kind, account or None, cluster style) of the L1 namespace that caches
        ``key``, or None when no namespace does."""
        fam, found = self.classify(key)
        if fam is None:
            return None
        got = self.kinds.get(fam.template)
        if got is None:
            return None
        kind, scoped = got
        return kind, (found.get("account_id") if scoped else None), fam.style == "cluster"

    def describe(self) -> Iterable[tuple[str, str, str]]:
        """(name, style, template) of every family, for documentation and ``--help``."""
        for fam in self.all:
            yield fam.name, fam.style, fam.template


def single_server(remote: Any, what: str) -> None:
    """Refuse a Redis Cluster topology: the tools walk one server's keyspace."""
    if getattr(remote, "is_cluster", False):
        raise ConfigurationError(
            f"{what} works on one server, not yet on a Redis Cluster (its keys are spread "
            "over the masters): use the cluster's own replication or RDB tools there"
        )
