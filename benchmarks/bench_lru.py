"""L1 micro-benchmarks: the Cython LRU and its twin against dict.get and peer caches.

Two ways to run it:

* ``pytest benchmarks/bench_lru.py`` (pytest-benchmark): get-hit, get-miss, set
  (overwrite) and insert-with-eviction for every candidate, grouped by operation. Every
  round loops over the same 10,000 str keys, so the per-call cost dominates the
  benchmark's own overhead: divide a round's time by 10,000 for the cost of one call.
* ``python benchmarks/bench_lru.py`` (timeit): interleaved repetitions of get-hit, the
  median ns/call of each candidate and its ratio to ``dict.get`` measured in the same run,
  plus the per-entry memory overhead of the caches (tracemalloc). Quick ratio check.

Candidates with a TTL use one hour, so nothing expires during a run; the Cython LRU and
its twin get weight 1 per entry, so ``max_weight`` is an entry count like the others'.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import os
import random
import statistics
import sys
import timeit
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import cal_redis  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cal_redis._fast import _lru_py

try:
    from cal_redis._fast import _lru_c
except ImportError:  # pragma: no cover - pure-Python install
    _lru_c = None

N = 10_000
TTL = 3600.0
KEYS = [f"user:{i:05d}:profile" for i in range(N)]
MISS_KEYS = [f"miss:{i:05d}:profile" for i in range(N)]
VALUES = [("value", i) for i in range(N)]
NO_EXTENSIONS = os.environ.get("CAL_REDIS_NO_EXTENSIONS", "") not in ("", "0")


# ----------------------------------------------------------------------------- candidates
#
# Each candidate builds a cache of a given capacity and returns three loop bodies over a
# list of keys: get (hit or miss depending on the keys), set (store the VALUES) and the
# same set used for insert-with-eviction when the capacity is smaller than the key count.


class Candidate:
    def __init__(
        self,
        name: str,
        make: Callable[[int], Any],
        get: Callable[[Any], Callable[[list[str]], None]],
        put: Callable[[Any], Callable[[list[str]], None]],
    ) -> None:
        self.name = name
        self.make = make
        self.get = get
        self.put = put


def _get_loop(cache: Any) -> Callable[[list[str]], None]:
    get = cache.get

    def loop(keys: list[str]) -> None:
        for k in keys:
            get(k)

    return loop


def _setitem_loop(cache: Any) -> Callable[[list[str]], None]:
    def loop(keys: list[str]) -> None:
        c = cache
        for k, v in zip(keys, VALUES, strict=True):
            c[k] = v

    return loop


def _lru_set_loop(cache: Any) -> Callable[[list[str]], None]:
    put = cache.set

    def loop(keys: list[str]) -> None:
        for k, v in zip(keys, VALUES, strict=True):
            put(k, v, 1)

    return loop


def _moka_set_loop(cache: Any) -> Callable[[list[str]], None]:
    put = cache.set

    def loop(keys: list[str]) -> None:
        for k, v in zip(keys, VALUES, strict=True):
            put(k, v)

    return loop


def _vttl_set_loop(cache: Any) -> Callable[[list[str]], None]:
    put = cache.insert

    def loop(keys: list[str]) -> None:
        for k, v in zip(keys, VALUES, strict=True):
            put(k, v, TTL)

    return loop


def _theine_set_loop(cache: Any) -> Callable[[list[str]], None]:
    put = cache.set
    ttl = datetime.timedelta(seconds=TTL)

    def loop(keys: list[str]) -> None:
        for k, v in zip(keys, VALUES, strict=True):
            put(k, v, ttl)

    return loop


def _dict_make(capacity: int) -> dict[str, Any]:
    return {}


def candidates() -> list[Candidate]:
    out: list[Candidate] = [
        Candidate("dict", _dict_make, _get_loop, _setitem_loop),  # baseline, no eviction
    ]
    if _lru_c is not None:
        cls = _lru_c.LRUCache
        out.append(Candidate("cal_redis-cython", lambda n: cls(n, TTL), _get_loop, _lru_set_loop))
    out.append(
        Candidate(
            "cal_redis-python",
            lambda n: _lru_py.LRUCache(n, TTL),
            _get_loop,
            _lru_set_loop,
        )
    )
    try:
        import cachetools
    except ImportError:
        pass
    else:
        out.append(
            Candidate(
                "cachetools.TTLCache",
                lambda n: cachetools.TTLCache(n, TTL),
                _get_loop,
                _setitem_loop,
            )
        )
    try:
        import lru
    except ImportError:
        pass
    else:
        out.append(Candidate("lru-dict.LRU", lambda n: lru.LRU(n), _get_loop, _setitem_loop))
    try:
        import cachebox
    except ImportError:
        pass
    else:
        out.append(
            Candidate(
                "cachebox.TTLCache",
                lambda n: cachebox.TTLCache(n, TTL),
                _get_loop,
                _setitem_loop,
            )
        )
        out.append(
            Candidate(
                "cachebox.VTTLCache",
                lambda n: cachebox.VTTLCache(n),
                _get_loop,
                _vttl_set_loop,
            )
        )
    try:
        import moka_py
    except ImportError:
        pass
    else:
        out.append(
            Candidate(
                "moka-py.Moka",
                lambda n: moka_py.Moka(n, ttl=TTL),
                _get_loop,
                _moka_set_loop,
            )
        )
    try:
        import theine
    except ImportError:
        pass
    else:
        # theine 2.x: Cache(size), get(key) -> (value, found), set(key, value, ttl).
        out.append(
            Candidate("theine.Cache", lambda n: theine.Cache(n), _get_loop, _theine_set_loop)
        )
    return out


def _filled(cand: Candidate, capacity: int, keys: list[str]) -> Any:
    cache = cand.make(capacity)
    cand.put(cache)(keys)
    return cache


# ----------------------------------------------------------------------------- pytest mode

try:
    import pytest
except ImportError:  # pragma: no cover - script mode without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:
    _CANDIDATES = {c.name: c for c in candidates()}
    _NAMES = list(_CANDIDATES)

    def _cand(name: str) -> Candidate:
        return _CANDIDATES[name]

    def test_compiled_module_present() -> None:
        if _lru_c is None and not NO_EXTENSIONS:
            pytest.fail("cal_redis._fast._lru_c does not import: benchmarks would be skewed")

    @pytest.mark.parametrize("name", _NAMES)
    def test_get_hit(benchmark: Any, name: str) -> None:
        benchmark.group = "get-hit (10k calls/round)"
        cand = _cand(name)
        cache = _filled(cand, 2 * N, KEYS)
        benchmark(cand.get(cache), KEYS)

    @pytest.mark.parametrize("name", _NAMES)
    def test_get_miss(benchmark: Any, name: str) -> None:
        benchmark.group = "get-miss (10k calls/round)"
        cand = _cand(name)
        cache = _filled(cand, 2 * N, KEYS)
        benchmark(cand.get(cache), MISS_KEYS)

    @pytest.mark.parametrize("name", _NAMES)
    def test_set_overwrite(benchmark: Any, name: str) -> None:
        benchmark.group = "set-overwrite (10k calls/round)"
        cand = _cand(name)
        cache = _filled(cand, 2 * N, KEYS)
        benchmark(cand.put(cache), KEYS)

    @pytest.mark.parametrize("name", [n for n in _NAMES if n != "dict"])
    def test_insert_with_eviction(benchmark: Any, name: str) -> None:
        # Capacity N/2 and two alternating halves of 2N keys: after the first round every
        # insert is a new key and evicts the least recent one.
        benchmark.group = "insert-evict (10k calls/round)"
        cand = _cand(name)
        cache = _filled(cand, N // 2, KEYS)
        put = cand.put(cache)
        batches = [MISS_KEYS, KEYS]
        state = {"i": 0}

        def run() -> None:
            state["i"] ^= 1
            put(batches[state["i"]])

        benchmark(run)


# ----------------------------------------------------------------------------- script mode


def _ns_per_call(loop: Callable[[], None], number: int) -> float:
    return timeit.Timer(loop).timeit(number=number) / (number * N) * 1e9


def interleaved_get_hit(reps: int, number: int, names: set[str] | None = None) -> dict[str, float]:
    """Median ns/call of get-hit per candidate, candidates interleaved in random order."""
    loops: dict[str, Callable[[], None]] = {}
    for cand in candidates():
        if names is not None and cand.name not in names:
            continue
        cache = _filled(cand, 2 * N, KEYS)
        body = cand.get(cache)
        loops[cand.name] = functools.partial(body, KEYS)
        loops[cand.name]()  # warm up
    samples: dict[str, list[float]] = {name: [] for name in loops}
    order = list(loops)
    rng = random.Random(42)
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            # Slow candidates get fewer iterations so that a repetition stays short.
            n = number if name not in ("cachetools.TTLCache", "theine.Cache") else 1
            samples[name].append(_ns_per_call(loops[name], n))
    return {name: statistics.median(v) for name, v in samples.items()}


def bytes_per_entry(make: Callable[[int], Any], put: Callable[[Any, str, Any], None]) -> float:
    """Memory allocated by a cache holding N entries, per entry, keys and values excluded."""
    n = 100_000
    keys = [f"user:{i:06d}:profile" for i in range(n)]
    value = ("shared", "value")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = make(2 * n)
        for k in keys:
            put(cache, k, value)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del cache
    return (after - before) / n


def memory_report() -> dict[str, float]:
    rows: dict[str, float] = {
        "dict (slot only)": bytes_per_entry(lambda n: {}, lambda c, k, v: c.__setitem__(k, v)),
        "cal_redis-python": bytes_per_entry(
            lambda n: _lru_py.LRUCache(n, TTL), lambda c, k, v: c.set(k, v, 1)
        ),
    }
    if _lru_c is not None:
        rows["cal_redis-cython"] = bytes_per_entry(
            lambda n: _lru_c.LRUCache(n, TTL), lambda c, k, v: c.set(k, v, 1)
        )
        rows["cal_redis-cython (no TTL)"] = bytes_per_entry(
            lambda n: _lru_c.LRUCache(n), lambda c, k, v: c.set(k, v, 1)
        )
    try:
        import cachetools
    except ImportError:
        pass
    else:
        rows["cachetools.TTLCache"] = bytes_per_entry(
            lambda n: cachetools.TTLCache(n, TTL), lambda c, k, v: c.__setitem__(k, v)
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=31, help="interleaved repetitions")
    parser.add_argument("--number", type=int, default=5, help="10k-key loops per sample")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory report")
    args = parser.parse_args(argv)

    if _lru_c is None:
        print("WARNING: compiled module not importable; only the twin is measured.")
    print(f"get-hit, {N} str keys, medians of {args.reps} interleaved repetitions")
    res = interleaved_get_hit(args.reps, args.number)
    base = res["dict"]
    print(f"{'candidate':28s} {'ns/call':>9s} {'vs dict.get':>12s}")
    for name, ns in sorted(res.items(), key=lambda kv: kv[1]):
        print(f"{name:28s} {ns:9.1f} {ns / base:11.2f}x")
    if "cal_redis-cython" in res:
        ours = res["cal_redis-cython"]
        print()
        for peer in ("dict", "cachetools.TTLCache", "cachebox.TTLCache", "moka-py.Moka"):
            if peer in res:
                print(f"cal_redis-cython / {peer:20s} = {ours / res[peer]:.3f}")
    if not args.no_memory:
        print()
        print("memory per entry (tracemalloc, 100k entries, keys and values excluded)")
        for name, b in memory_report().items():
            print(f"{name:28s} {b:7.1f} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
