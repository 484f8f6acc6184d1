"""Realistic L1 entries of every cache-first family, and what they really hold in memory.

Shared by tests/test_weights.py and the calibration of ``cal_redis.config.DEFAULT_ENTRY_WEIGHTS``.
Each family builds its raw inputs first (bytes, as read from Redis or received from a
caller), then fills a :class:`~cal_redis.local.LocalTier` the way the engine does:
decode the JSON, build the L1 key from fresh strings, store with the tier's weight. The
fill runs under :mod:`tracemalloc`, so the bytes it leaves allocated are the decoded
values, their keys and the LRU's bookkeeping, and nothing else.

Run ``python tests/weight_support.py`` for the calibration table (both L1
implementations; add ``--fit`` for the least-squares line of the flow states).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import random
import string
import sys
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cal_redis import codec
from cal_redis import local as local_mod
from cal_redis.config import CacheConfig
from cal_redis.local import LocalTier
from cal_redis.models import Account, Device, FlowState, Model, Proxy, Region, User

IDENT = "\x00ident"  # the engine's marker of ident -> id keys
TS = 1_764_000_000_000  # a realistic millisecond timestamp

Row = tuple[bytes, ...]


@dataclass(frozen=True)
class Family:
    """One kind of L1 entry: how to make its raw inputs and how the engine stores them."""

    name: str
    namespace: str
    make: Callable[[int, int], list[Row]]  # (n, seed) -> raw inputs, bytes only
    fill: Callable[[LocalTier, list[Row]], None]  # one set() per entry
    #: The length the weight is computed from: the JSON's (row[0]), or for string
    #: entries the two strings' (row[0] and row[1]).
    strings: bool = False

    #: The batch fill path (``LocalTier.fill_many``), for the entity families.
    fill_batches: Callable[[LocalTier, list[Row]], None] | None = None

    def size(self, row: Row) -> int:
        return len(row[0]) + len(row[1]) if self.strings else len(row[0])

    def rows(self, n: int, seed: int = 0) -> list[Row]:
        """``make(n, seed)``, built once (the rows are immutable bytes)."""
        return _rows(self.name, n, seed)


@dataclass(frozen=True)
class Measured:
    """Per-entry means of one fill: memory really allocated, weight charged, input bytes."""

    family: str
    implementation: str
    entries: int
    real: float
    weight: float
    size: float  # the ``json_len`` (or string length) the weight was computed from

    @property
    def ratio(self) -> float:
        """Weight over real memory (1.0 = exact)."""
        return self.weight / self.real


# ----------------------------------------------------------------------------- samples


class _Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def word(self, lo: int, hi: int) -> str:
        rng = self.rng
        return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(lo, hi)))

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128)))

    def phone(self) -> str:
        return f"+44{self.rng.randrange(10**10):010d}"

    def choice(self, options: list[Any]) -> Any:
        return self.rng.choice(options)


def regions(n: int, seed: int) -> list[Region]:
    g = _Gen(seed)
    return [
        Region(
            id=f"{g.word(2, 3)}-{g.word(4, 8)}-{i}",
            code=f"{g.word(2, 4)}{i}",
            name=f"{g.word(4, 10).title()} {g.word(4, 10).title()} {i}",
            country=g.choice(["IE", "US", "GB", "DE", "FR", "SG"]),
            timezone=g.choice(["Europe/Dublin", "America/New_York", "UTC", "Asia/Singapore"]),
            created_at=TS + i,
            updated_at=TS + 3 * i,
        )
        for i in range(n)
    ]


def proxies(n: int, seed: int) -> list[Proxy]:
    g = _Gen(seed)
    return [
        Proxy(
            id=f"proxy-{g.word(3, 6)}-{i:05d}",
            region_id=f"{g.word(2, 3)}-{g.word(4, 8)}-1",
            host=f"sip{i}.{g.word(3, 8)}.{g.word(5, 10)}.example",
            port=g.choice([5060, 5061, 5080]),
            transport=g.choice(["udp", "tcp", "tls"]),
            created_at=TS + i,
            updated_at=TS + 5 * i,
        )
        for i in range(n)
    ]


def accounts(n: int, seed: int) -> list[Account]:
    g = _Gen(seed)
    out = []
    for i in range(n):
        name = g.word(4, 12)
        out.append(
            Account(
                id=f"acc-{i:06d}",
                name=f"{name.title()} {g.word(4, 10).title()} Ltd",
                domain=f"{name}-{i}.example",
                code=f"{name[:4].upper()}{i}",
                region_id=f"{g.word(2, 3)}-{g.word(4, 8)}-1",
                plan=g.choice(["starter", "business", "enterprise"]),
                max_users=g.rng.randint(5, 5000),
                created_at=TS + i,
                updated_at=TS + 11 * i,
            )
        )
    return out


def users(n: int, seed: int) -> list[User]:
    g = _Gen(seed)
    out = []
    for i in range(n):
        first, last = g.word(3, 10), g.word(4, 12)
        out.append(
            User(
                id=f"u{i:06d}",
                account_id=f"acc-{i % 97:06d}",
                email=f"{first}.{last}@{g.word(5, 14)}.example",
                username=f"{first}.{last}",
                name=f"{first.title()} {last.title()}",
                extension=str(100000 + i),
                role=g.choice(["user", "agent", "admin", "supervisor"]),
                created_at=TS + i,
                updated_at=TS + 7 * i,
            )
        )
    return out


def devices(n: int, seed: int) -> list[Device]:
    g = _Gen(seed)
    out = []
    for i in range(n):
        mac = ":".join(f"{g.rng.randrange(256):02X}" for _ in range(6))
        out.append(
            Device(
                id=f"dev-{i:06d}",
                account_id=f"acc-{i % 97:06d}",
                user_id=f"u{i:06d}" if g.rng.random() < 0.8 else "",
                name=f"{g.word(4, 10).title()} {g.choice(['desk', 'softphone', 'mobile'])}",
                sip_username=f"{g.word(4, 10)}-{1000 + i}",
                mac=mac if g.rng.random() < 0.7 else "",
                model=g.choice(["Yealink T54W", "Poly VVX 450", "Cisco 8851", "Grandstream GRP2614", ""]),
                created_at=TS + i,
                updated_at=TS + 13 * i,
            )
        )
    return out


#: Flow variables come from a fixed vocabulary (the flow designer's), so their names
#: repeat from one state to the next, as they do in production.
FLOW_VARS = [
    "queue", "priority", "menu_choice", "digits", "retries", "account_code", "customer_id",
    "ticket", "language", "vip", "last_prompt", "transfer_to", "voicemail_box",
    "callback_number", "survey_score", "agent_id", "skill", "timeout_ms", "record", "note",
]  # fmt: skip


def flow_states(n: int, seed: int, n_vars: int | None = None) -> list[FlowState]:
    """``n_vars`` flow variables (about, +-3) per state; None: 0 to 15, uniformly."""
    g = _Gen(seed)
    rng = g.rng
    out = []
    for i in range(n):
        data: dict[str, Any] = {
            "call_id": g.uuid(),
            "caller": g.phone(),
            "callee": g.phone(),
            "node": f"{g.choice(['menu', 'queue', 'play', 'collect'])}-{rng.randrange(100)}",
            "lang": g.choice(["en-GB", "en-US", "fr-FR", "de-DE"]),
            "attempts": rng.randrange(4),
            "started_at": TS + i,
        }
        k = rng.randint(0, 15) if n_vars is None else rng.randint(max(0, n_vars - 3), n_vars + 3)
        for name in rng.sample(FLOW_VARS, min(k, len(FLOW_VARS))):
            data[name] = g.choice(
                [g.word(3, 16), rng.randrange(10**6), rng.randrange(10), True, None, g.phone()]
            )
        out.append(
            FlowState(
                id=f"flow-{g.uuid()}",
                account_id=f"acc-{i % 97:06d}",
                state=g.choice(["ivr_menu", "collect_digits", "queue_wait", "transfer", "voicemail"]),
                data=data,
                updated_at=TS + i,
            )
        )
    return out


def trunk_ips(n: int, seed: int) -> list[tuple[str, str]]:
    """(canonical IP, account id): 80 % IPv4, 20 % IPv6."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if rng.random() < 0.8:
            ip = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        else:
            ip = f"2001:db8:{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}::{rng.randrange(1 << 16):x}"
        out.append((ip, f"acc-{i % 997:06d}"))
    return out


# ----------------------------------------------------------------------------- families


def _entity_family(
    name: str, namespace: str, model: type[Model], build: Callable[[int, int], list[Any]], scoped: bool
) -> Family:
    dec = codec.decoder(model).decode

    def make(n: int, seed: int) -> list[Row]:
        return [
            (codec.encode(obj), obj.id.encode(), getattr(obj, "account_id", "").encode())
            for obj in build(n, seed)
        ]

    def fill(tier: LocalTier, rows: list[Row]) -> None:
        l1 = tier[namespace]
        weight = tier.weight
        for raw, id_b, acc_b in rows:
            value = dec(raw)
            key = (acc_b.decode(), id_b.decode()) if scoped else id_b.decode()
            l1.set(key, value, weight(namespace, len(raw)))

    def fill_batches(tier: LocalTier, rows: list[Row], batch: int = 1000) -> None:
        l1 = tier[namespace]
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            raws = [row[0] for row in chunk]
            if scoped:
                keys: list[Any] = [(acc_b.decode(), id_b.decode()) for _, id_b, acc_b in chunk]
            else:
                keys = [id_b.decode() for _, id_b, _ in chunk]
            values = codec.decode_batch(raws, model, key=namespace, fields=keys)
            token = l1.begin_fill()
            try:
                tier.fill_many(namespace, keys, values, list(map(len, raws)), token)
            finally:
                l1.end_fill()

    return Family(name, namespace, make, fill, fill_batches=fill_batches)


def _ident_family(
    name: str, namespace: str, build: Callable[[int, int], list[Any]], fields: tuple[str, ...], scoped: bool
) -> Family:
    def make(n: int, seed: int) -> list[Row]:
        rows: list[Row] = []
        for obj in build(n, seed):
            for f in fields:
                ident = getattr(obj, f)
                if ident and len(rows) < n:
                    rows.append((ident.encode(), obj.id.encode(), getattr(obj, "account_id", "").encode()))
        return rows

    def fill(tier: LocalTier, rows: list[Row]) -> None:
        l1 = tier[namespace]
        ident_weight = tier.ident_weight
        for ident_b, id_b, acc_b in rows:
            ident, id_ = ident_b.decode(), id_b.decode()
            key = (acc_b.decode(), IDENT, ident) if scoped else (IDENT, ident)
            l1.set(key, id_, ident_weight(namespace, len(ident) + len(id_)))

    return Family(name, namespace, make, fill, strings=True)


def _trunk_make(n: int, seed: int) -> list[Row]:
    return [(ip.encode(), account.encode()) for ip, account in trunk_ips(n, seed)]


def _trunk_fill(tier: LocalTier, rows: list[Row]) -> None:
    l1 = tier["trunks_ip"]
    weight = tier.weight
    for ip_b, acc_b in rows:
        ip, account = ip_b.decode(), acc_b.decode()
        l1.set(ip, account, weight("trunks_ip", len(ip) + len(account)))


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        _entity_family("region", "regions", Region, regions, scoped=False),
        _entity_family("proxy", "proxies", Proxy, proxies, scoped=False),
        _entity_family("account", "accounts", Account, accounts, scoped=False),
        _entity_family("user", "users", User, users, scoped=False),
        _entity_family("device", "devices", Device, devices, scoped=True),
        _entity_family("flow_state", "flow_states", FlowState, flow_states, scoped=True),
        Family("trunk_ip", "trunks_ip", _trunk_make, _trunk_fill, strings=True),
        _ident_family("region_ident", "regions", regions, ("code", "name"), scoped=False),
        _ident_family("account_ident", "accounts", accounts, ("domain", "code"), scoped=False),
        _ident_family("user_ident", "users", users, ("email", "username", "extension"), scoped=False),
        _ident_family("device_ident", "devices", devices, ("sip_username", "mac"), scoped=True),
    )
}



@functools.cache
def _rows(name: str, n: int, seed: int) -> list[Row]:
    return FAMILIES[name].make(n, seed)


# ----------------------------------------------------------------------------- measuring


def measure(
    family: Family,
    n: int,
    *,
    seed: int = 0,
    batch: bool = False,
    config: CacheConfig | None = None,
    rows: list[Row] | None = None,
) -> Measured:
    """Fill ``n`` entries of ``family`` into a fresh LocalTier (its LRU implementation is
    whatever ``cal_redis.local.LRUCache`` is now) and measure them with tracemalloc.

    ``batch``: through ``LocalTier.fill_many`` 1,000 at a time, as the batch read does.
    """
    rows = family.rows(n, seed) if rows is None else rows
    fill = family.fill
    if batch:
        assert family.fill_batches is not None, f"{family.name} has no batch path"
        fill = family.fill_batches
    config = (config or CacheConfig()).with_budget(family.namespace, max_bytes=1 << 40, ttl=3600.0)
    tier = LocalTier(config, [family.namespace])
    l1 = tier[family.namespace]
    size = sum(map(family.size, rows)) / len(rows)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(tier, rows)
        real = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    entries = len(l1)
    assert entries == len(rows), "every entry must fit: the budget is unbounded here"
    impl = "py" if type(l1).__module__.endswith("_lru_py") else "c"
    return Measured(family.name, impl, entries, real / entries, l1.weight / entries, size)


@contextmanager
def implementation(name: str) -> Iterator[None]:
    """Make LocalTier build LRUs of implementation ``name`` ("c" or "py") for a while."""
    module = "cal_redis._fast._lru_c" if name == "c" else "cal_redis._fast._lru_py"
    saved = local_mod.LRUCache
    local_mod.LRUCache = importlib.import_module(module).LRUCache
    try:
        yield
    finally:
        local_mod.LRUCache = saved


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line ``real = a + b * size`` through ``(size, real)`` points."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Calibration table of the L1 entry weights.")
    parser.add_argument("-n", type=int, default=100_000, help="entries per family")
    parser.add_argument("--fit", action="store_true", help="fit real = a + b * json_len (flow states)")
    parser.add_argument("--impl", choices=("c", "py", "both"), default="both", help="L1 implementation")
    args = parser.parse_args(argv)
    print(f"CPython {sys.version.split()[0]}, {args.n} entries per family")
    head = ("family", "impl", "size", "real", "weight", "real-size", "w/real")
    print("{:14s} {:4s} {:>7s} {:>8s} {:>8s} {:>9s} {:>6s}".format(*head))
    for impl in ("c", "py") if args.impl == "both" else (args.impl,):
        with implementation(impl):
            for family in FAMILIES.values():
                m = measure(family, args.n)
                print(
                    f"{m.family:14s} {m.implementation:4s} {m.size:7.1f} {m.real:8.1f} "
                    f"{m.weight:8.1f} {m.real - m.size:9.1f} {m.ratio:6.3f}"
                )
            if args.fit:
                fam = FAMILIES["flow_state"]
                pts = []
                for n_vars in (0, 3, 6, 10, 15):
                    rows = [
                        (codec.encode(o), o.id.encode(), o.account_id.encode())
                        for o in flow_states(args.n, 0, n_vars)
                    ]
                    m = measure(fam, args.n, rows=rows)
                    pts.append((m.size, m.real))
                    print(f"  flow_state n_vars~{n_vars:2d}: size {m.size:7.1f} real {m.real:8.1f}")
                a, b = _fit(pts)
                print(f"  fit ({impl}): real = {a:.1f} + {b:.3f} * json_len")
    return 0


if __name__ == "__main__":
    sys.exit(main())
