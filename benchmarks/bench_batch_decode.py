"""Batch decode strategies for an HMGET reply (list of bytes-or-None), measured.

Compares, on the same ~300 B / 10-field User documents in one run:
- per-item: ``[None if r is None else dec.decode(r) for r in raws]`` (what codec uses)
- joined: ``b"[" + b",".join(...) + b"]"`` decoded once as ``list[User]``
  (``null`` placeholders keep positions: decoded as ``list[User | None]``)

Run: ``python benchmarks/bench_batch_decode.py``.
"""

from __future__ import annotations

import statistics
import time

import msgspec

from cal_redis.codec import decode_batch
from cal_redis.models import User


def make_raws(n: int, hole_every: int = 10) -> list[bytes | None]:
    out: list[bytes | None] = []
    for i in range(n):
        if hole_every and i % hole_every == 7:
            out.append(None)
            continue
        out.append(msgspec.json.encode(User(
            id=f"user-{i:06d}", account_id="acc-000042", email=f"agent{i}@acme-telecom.example",
            username=f"agent{i}", name=f"Agent Number {i}", extension=str(1000 + i),
            role="agent", created_at=1764000000000 + i, updated_at=1764000000000 + i,
        )))
    return out


def per_item(raws: list[bytes | None]) -> list[User | None]:
    return decode_batch(raws, User, key="cal:users", fields=[""] * len(raws))


_joined_dec = msgspec.json.Decoder(list[User | None])


def joined(raws: list[bytes | None]) -> list[User | None]:
    return _joined_dec.decode(b"[" + b",".join(b"null" if r is None else r for r in raws) + b"]")


def measure(n: int, reps: int = 200) -> dict[str, float]:
    raws = make_raws(n)
    assert per_item(raws) == joined(raws)
    inner = max(1, 20_000 // n)
    samples: dict[str, list[float]] = {"per_item": [], "joined": []}
    for _ in range(reps):  # interleaved
        for name, fn in (("per_item", per_item), ("joined", joined)):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn(raws)
            samples[name].append((time.perf_counter() - t0) / inner / n)
    return {k: statistics.median(v) * 1e9 for k, v in samples.items()}


if __name__ == "__main__":
    print(f"{'n':>6} {'per-item ns/item':>18} {'joined ns/item':>16} {'joined/per-item':>16}")
    for n in (10, 100, 1000, 10000):
        r = measure(n, reps=50 if n >= 10000 else 200)
        print(f"{n:>6} {r['per_item']:>18.0f} {r['joined']:>16.0f} {r['joined'] / r['per_item']:>16.2f}")
