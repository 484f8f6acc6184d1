# cython: language_level=3
# cython: binding=False, embedsignature=True, embedsignature.format=clinic
# cython: boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled L1 cache: a weighted LRU with per-entry TTL and fenced read-through fills.

This module is the fast twin of :mod:`cal_redis._fast._lru_py`, which is the documented,
typed reference: both expose the same names with the same observable behaviour. See the
docstrings there; only implementation notes live here.

Layout: ``_map`` (a dict) owns one ``_Entry`` per key. Entries are threaded on two
intrusive doubly-linked lists through *borrowed* ``PyObject*`` links, so moving an entry
costs a handful of pointer writes and no reference counting:

* the LRU list (``_head`` = most recent ... ``_tail`` = least recent);
* the expiry list, ordered by ``purge_at`` (``_ehead`` = soonest), the time an entry is
  removed: its deadline ``expires_at``, or later when the stale window keeps it longer
  (``max(expires_at, stored_at + stale_window)``). New entries are inserted from the tail
  walking backwards, so a uniform TTL costs O(1). Entries that never expire are not
  linked on it at all (they would sit at its end and never be popped).

Re-entrancy: removing an entry can free its value, and freeing a value can run arbitrary
Python code (``__del__``, weakref callbacks) that may call back into this cache. Removed
entries are therefore parked on a "grave" chain (with an extra reference) and only released
once the cache is consistent again, at the end of the operation.
"""

cimport cython
from cpython.dict cimport PyDict_DelItem, PyDict_GetItemWithError, PyDict_SetItem, PyDict_Size
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.ref cimport Py_INCREF
from cpython.object cimport PyObject, PyObject_Hash
from libc.math cimport INFINITY

cdef extern from *:
    """
    #if defined(_WIN32)
      #ifndef WIN32_LEAN_AND_MEAN
      #define WIN32_LEAN_AND_MEAN
      #endif
      #include <windows.h>
      /* Milliseconds since boot; advances with the system timer (about 15.6 ms). */
      static double calr_monotonic(void) {
          return (double)GetTickCount64() * 1e-3;
      }
    #elif defined(__APPLE__)
      #include <time.h>
      /* Coarse monotonic clock, updated at the scheduler tick (a few ms at most). */
      static double calr_monotonic(void) {
          return (double)clock_gettime_nsec_np(CLOCK_MONOTONIC_RAW_APPROX) * 1e-9;
      }
    #else
      #include <time.h>
      /* Linux: CLOCK_MONOTONIC_COARSE is served from the vDSO without a syscall and
         advances once per kernel tick (1-4 ms depending on CONFIG_HZ). */
      static double calr_monotonic(void) {
          struct timespec ts;
      #if defined(CLOCK_MONOTONIC_COARSE)
          if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
      #endif
          {
              clock_gettime(CLOCK_MONOTONIC, &ts);
          }
          return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
      }
    #endif
    """
    double calr_monotonic() noexcept nogil
    void calr_incref "Py_INCREF"(PyObject* o) noexcept
    void calr_decref "Py_DECREF"(PyObject* o) noexcept
    const Py_ssize_t CALR_SSIZE_MAX "PY_SSIZE_T_MAX"

cdef object _MISSING = object()


def monotonic_coarse():
    """Return the built-in clock used when ``clock=None`` (seconds, as a float)."""
    return calr_monotonic()


@cython.final
@cython.freelist(64)
@cython.no_gc
@cython.auto_pickle(False)
cdef class _Entry:
    """Internal node: one cached value with its weight, deadline and list links."""


cdef inline void _release(PyObject* grave) noexcept:
    """Drop the extra references taken by ``_detach`` (may run arbitrary Python code)."""
    cdef PyObject* nxt
    while grave is not NULL:
        nxt = (<_Entry>grave).next
        (<_Entry>grave).next = NULL
        calr_decref(grave)
        grave = nxt


cdef Py_ssize_t _check_size(object value, str name) except -1:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if value > CALR_SSIZE_MAX:
        raise ValueError(f"{name} must be <= {CALR_SSIZE_MAX}, got {value!r}")
    return value


cdef inline Py_ssize_t _parse_weight(object weight) except -2:
    """Validated weight; -1 means "larger than any possible budget"."""
    cdef int overflow = 0
    cdef long long v
    if not isinstance(weight, int):
        raise TypeError(f"weight must be an int, not {type(weight).__name__}")
    v = PyLong_AsLongLongAndOverflow(weight, &overflow)
    if overflow < 0 or (overflow == 0 and v < 0):
        raise ValueError(f"weight must be >= 0, got {weight!r}")
    if overflow > 0 or v > CALR_SSIZE_MAX:
        return -1
    return <Py_ssize_t>v


cdef inline Py_ssize_t _add_weights(Py_ssize_t a, Py_ssize_t b) noexcept:
    """Sum of two parsed weights; -1 (over any budget) when either is, or on overflow."""
    if a < 0 or b < 0 or a > CALR_SSIZE_MAX - b:
        return -1
    return a + b


cdef double _parse_ttl(object ttl, str name) except -1.0:
    cdef double t
    if not isinstance(ttl, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds or None, not {type(ttl).__name__}"
        )
    t = ttl
    if not (t > 0.0):
        raise ValueError(f"{name} must be > 0 (or None / math.inf: never expires), got {ttl!r}")
    return t


cdef double _parse_seconds(object value, str name) except -1.0:
    cdef double t
    if not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    t = value
    if not (0.0 <= t < INFINITY):
        raise ValueError(f"{name} must be >= 0 seconds and finite, got {value!r}")
    return t


cdef double _parse_fraction(object value) except -1.0:
    cdef double f
    if not isinstance(value, (int, float)):
        raise TypeError(f"fraction must be a number, not {type(value).__name__}")
    f = value
    if not (0.0 <= f < 1.0):
        raise ValueError(f"fraction must be >= 0 and < 1 (0: off), got {value!r}")
    return f


cdef long long _parse_token(object token) except? -1:
    if not isinstance(token, int):
        raise TypeError(f"token must be an int, not {type(token).__name__}")
    return token


cdef inline bint _prefix_match(object key, str prefix):
    if isinstance(key, str):
        return (<str>key).startswith(prefix)
    if isinstance(key, tuple) and len(<tuple>key) > 0:
        first = (<tuple>key)[0]
        if isinstance(first, str):
            return (<str>first).startswith(prefix)
    return False


@cython.final
@cython.auto_pickle(False)
cdef class LRUCache:
    """Weighted LRU cache with TTL and fenced fills (compiled; see ``_lru_py.LRUCache``).

    The built-in clock (``clock=None``) is read in C: ``CLOCK_MONOTONIC_COARSE`` on Linux
    (vDSO, no syscall; resolution = one kernel tick, typically 1-4 ms), falling back to
    ``CLOCK_MONOTONIC``; ``CLOCK_MONOTONIC_RAW_APPROX`` on macOS; ``GetTickCount64`` on
    Windows (about 15.6 ms). No Python-level lock: under the GIL every method call is
    atomic; free-threaded builds are out of scope for now.
    """

    def __cinit__(self):
        self._map = {}
        self._fence = {}
        self._clock = None
        self._c_clock = True
        self._default_ttl = INFINITY
        self._max_fence = 65536
        self._suspended = False
        self._stale_window = 0.0
        self._due_frac = 0.0
        self._on_due = None

    def __init__(self, max_weight, default_ttl=None, *, clock=None, max_fence=65536,
                 stale_window=0.0):
        cdef Py_ssize_t mw = _check_size(max_weight, "max_weight")
        cdef Py_ssize_t mf = _check_size(max_fence, "max_fence")
        cdef double dt = INFINITY
        cdef double keep
        if default_ttl is not None:
            dt = _parse_ttl(default_ttl, "default_ttl")
        keep = _parse_seconds(stale_window, "stale_window")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable or None, not {type(clock).__name__}")
        old = self._drop_all()
        self._max_weight = mw
        self._max_fence = mf
        self._default_ttl = dt
        self._clock = clock
        self._c_clock = clock is None
        self._gen = 0
        self._floor = 0
        self._inflight = 0
        self._fence = {}
        self._suspended = False
        self._stale_window = keep
        self._due_frac = 0.0
        self._on_due = None
        self._zero_stats()
        del old

    # ------------------------------------------------------------------ internals

    cdef inline double _now(self) except? -1.0:
        if self._c_clock:
            return calr_monotonic()
        return self._clock()

    cdef inline void _lru_unlink(self, PyObject* p) noexcept:
        cdef PyObject* prv = (<_Entry>p).prev
        cdef PyObject* nxt = (<_Entry>p).next
        if prv is NULL:
            self._head = nxt
        else:
            (<_Entry>prv).next = nxt
        if nxt is NULL:
            self._tail = prv
        else:
            (<_Entry>nxt).prev = prv

    cdef inline void _lru_push_front(self, PyObject* p) noexcept:
        cdef PyObject* h = self._head
        (<_Entry>p).prev = NULL
        (<_Entry>p).next = h
        if h is NULL:
            self._tail = p
        else:
            (<_Entry>h).prev = p
        self._head = p

    cdef inline void _exp_unlink(self, PyObject* p) noexcept:
        cdef PyObject* prv = (<_Entry>p).eprev
        cdef PyObject* nxt = (<_Entry>p).enext
        if prv is NULL:
            self._ehead = nxt
        else:
            (<_Entry>prv).enext = nxt
        if nxt is NULL:
            self._etail = prv
        else:
            (<_Entry>nxt).eprev = prv
        (<_Entry>p).eprev = NULL
        (<_Entry>p).enext = NULL

    cdef inline void _exp_insert(self, PyObject* p) noexcept:
        # Walk back from the tail past every later purge_at: O(1) for a uniform TTL.
        cdef double t = (<_Entry>p).purge_at
        cdef PyObject* q = self._etail
        cdef PyObject* nxt
        while q is not NULL and (<_Entry>q).purge_at > t:
            q = (<_Entry>q).eprev
        (<_Entry>p).eprev = q
        if q is NULL:
            nxt = self._ehead
            self._ehead = p
        else:
            nxt = (<_Entry>q).enext
            (<_Entry>q).enext = p
        (<_Entry>p).enext = nxt
        if nxt is NULL:
            self._etail = p
        else:
            (<_Entry>nxt).eprev = p

    cdef int _detach(self, PyObject* p, PyObject** grave) except -1:
        """Unlink and remove one entry; park it on ``grave`` (caller releases it)."""
        self._lru_unlink(p)
        if (<_Entry>p).purge_at != INFINITY:
            self._exp_unlink(p)
        self._weight -= (<_Entry>p).weight
        (<_Entry>p).weight = -1
        calr_incref(p)
        (<_Entry>p).prev = NULL
        (<_Entry>p).next = grave[0]
        grave[0] = p
        PyDict_DelItem(self._map, (<_Entry>p).key)
        return 0

    cdef Py_ssize_t _purge(self, double now, PyObject** grave) except -1:
        cdef Py_ssize_t n = 0
        while self._ehead is not NULL and (<_Entry>self._ehead).purge_at <= now:
            self._detach(self._ehead, grave)
            n += 1
        self.expirations += <unsigned long long>n
        return n

    cdef int _bump(self, object key) except -1:
        """A key's value is being removed or replaced: fence in-flight fills of it.

        Returns 1 when the fence overflowed and was cleared (which may run Python code).
        """
        self._gen += 1
        if self._inflight > 0:
            PyDict_SetItem(self._fence, key, self._gen)
            if PyDict_Size(self._fence) > self._max_fence:
                self._floor = self._gen
                self._fence.clear()
                return 1
        return 0

    cdef void _floor_all(self) noexcept:
        self._gen += 1
        self._floor = self._gen
        self._fence.clear()

    cdef object _store(self, object key, object value, Py_ssize_t w, double ttl):
        cdef double now = self._now()
        cdef PyObject* grave = NULL
        cdef PyObject* p
        cdef _Entry e
        cdef object old_value = None
        cdef double exp, purge, due
        p = PyDict_GetItemWithError(self._map, key)  # TypeError if unhashable
        try:
            if self._ehead is not NULL and (<_Entry>self._ehead).purge_at <= now:
                if self._purge(now, &grave):
                    p = PyDict_GetItemWithError(self._map, key)
            if self._bump(key):
                p = PyDict_GetItemWithError(self._map, key)
            if w < 0 or w > self._max_weight:
                self.rejections += 1
                if p is not NULL:
                    self._detach(p, &grave)
                return False
            exp = now + ttl
            purge = exp if self._stale_window <= ttl else now + self._stale_window
            due = exp  # never due (one comparison on a hit covers deadline and refresh)
            if self._due_frac != 0.0 and exp != INFINITY:
                due = now + ttl * (1.0 - self._due_frac)
            if p is not NULL:
                # Replace in place: the entry object (and the dict slot) are reused.
                e = <_Entry>p
                if p != self._head:
                    self._lru_unlink(p)
                    self._lru_push_front(p)
                while (self._weight - e.weight > self._max_weight - w
                       and self._tail is not NULL and self._tail != p):
                    self._detach(self._tail, &grave)
                    self.evictions += 1
                self._weight += w - e.weight
                e.weight = w
                old_value = e.value  # released on return, once consistent
                e.value = value
                e.expires_at = exp
                e.stored_at = now
                e.refresh_at = due
                if e.purge_at != purge:
                    if e.purge_at != INFINITY:
                        self._exp_unlink(p)
                    e.purge_at = purge
                    if purge != INFINITY:
                        self._exp_insert(p)
            else:
                while self._weight > self._max_weight - w and self._tail is not NULL:
                    self._detach(self._tail, &grave)
                    self.evictions += 1
                e = _Entry.__new__(_Entry)
                e.key = key
                e.value = value
                e.weight = w
                e.expires_at = exp
                e.stored_at = now
                e.refresh_at = due
                e.purge_at = purge
                PyDict_SetItem(self._map, key, e)
                p = <PyObject*>e
                self._lru_push_front(p)
                if purge != INFINITY:
                    self._exp_insert(p)
                self._weight += w
            self.inserts += 1
            return True
        finally:
            if grave is not NULL:
                _release(grave)

    cdef int _remove_key(self, object key) except -1:
        cdef PyObject* grave = NULL
        cdef PyObject* p = PyDict_GetItemWithError(self._map, key)
        if p is NULL:
            return 0
        self._detach(p, &grave)
        self.invalidations += 1
        _release(grave)
        return 1

    cdef object _lookup_live(self, object key, object missing, bint touch):
        cdef PyObject* grave = NULL
        cdef PyObject* p = PyDict_GetItemWithError(self._map, key)
        cdef _Entry e
        cdef double now
        if p is NULL or self._suspended:
            if touch:
                self.misses += 1
            return missing
        e = <_Entry>p
        if e.expires_at != INFINITY:
            now = self._now()
            if e.weight < 0:  # removed meanwhile by a re-entrant clock
                if touch:
                    self.misses += 1
                return missing
            if now >= e.expires_at:
                if touch:
                    self.misses += 1
                if now < e.purge_at:  # kept for get_stale
                    return missing
                self._detach(p, &grave)
                self.expirations += 1
                _release(grave)
                return missing
        if touch:
            if p != self._head:
                self._lru_unlink(p)
                self._lru_push_front(p)
            self.hits += 1
        return e.value

    cdef dict _drop_all(self):
        """Forget every entry; return the old map for the caller to release."""
        cdef dict old = self._map
        for v in old.values():
            (<_Entry>v).weight = -1
        self._map = {}
        self._head = NULL
        self._tail = NULL
        self._ehead = NULL
        self._etail = NULL
        self._weight = 0
        return old

    cdef list _keys(self):
        cdef list out = []
        cdef PyObject* p = self._head
        while p is not NULL:
            out.append((<_Entry>p).key)
            p = (<_Entry>p).next
        return out

    cdef void _zero_stats(self) noexcept:
        self.hits = 0
        self.misses = 0
        self.inserts = 0
        self.evictions = 0
        self.expirations = 0
        self.invalidations = 0
        self.rejections = 0
        self.stale_fills = 0

    # ------------------------------------------------------------------ reads

    cdef inline object _get(self, object key, object default):
        cdef PyObject* grave = NULL
        cdef PyObject* p = PyDict_GetItemWithError(self._map, key)
        cdef _Entry held
        cdef double now
        if p is NULL or self._suspended:
            self.misses += 1
            return default
        if (<_Entry>p).expires_at != INFINITY:
            if self._c_clock:
                now = calr_monotonic()
            else:
                # A user clock runs Python code: hold a reference across the call and
                # make sure the entry was not removed meanwhile.
                held = <_Entry>p
                now = self._clock()
                if held.weight < 0:
                    self.misses += 1
                    return default
            if now >= (<_Entry>p).refresh_at:  # refresh_at <= expires_at
                if now < (<_Entry>p).expires_at:
                    return self._due(p, key)
                self.misses += 1
                if now < (<_Entry>p).purge_at:  # kept for get_stale, never served here
                    return default
                self._detach(p, &grave)
                self.expirations += 1
                _release(grave)
                return default
        if p != self._head:
            self._lru_unlink(p)
            self._lru_push_front(p)
        self.hits += 1
        return (<_Entry>p).value

    cdef object _due(self, PyObject* p, object key):
        """A live hit on an entry due for refresh: bump it, mark it called, call the
        handler (which may run any code: the value is held first)."""
        cdef object value = (<_Entry>p).value
        if p != self._head:
            self._lru_unlink(p)
            self._lru_push_front(p)
        self.hits += 1
        (<_Entry>p).refresh_at = (<_Entry>p).expires_at  # called: not due again
        handler = self._on_due
        if handler is not None:
            handler(key)
        return value

    def get(self, key, default=None):
        """Return the live value for ``key`` (bumping it to most recent), else ``default``."""
        return self._get(key, default)

    def get_many(self, keys, default=None):
        """``[get(k, default) for k in keys]`` in one call (same order, counters, bumps)."""
        # A private tuple: a user clock runs Python code, which must not resize it.
        cdef tuple ks = tuple(keys)
        cdef Py_ssize_t i, n = len(ks)
        cdef list out = PyList_New(n)
        for i in range(n):
            v = self._get(ks[i], default)
            Py_INCREF(v)
            PyList_SET_ITEM(out, i, v)
        return out

    def peek(self, key, default=None):
        """Like ``get`` without the recency bump and without counting a hit or miss."""
        return self._lookup_live(key, default, False)

    def __contains__(self, key):
        return self._lookup_live(key, _MISSING, False) is not _MISSING

    def __len__(self):
        return PyDict_Size(self._map)

    def keys(self):
        """Snapshot of the keys, most recent first (expired-but-unpurged included)."""
        return self._keys()

    def suspend(self):
        """Hold every entry without serving it (see ``_lru_py.LRUCache.suspend``)."""
        self._suspended = True

    def resume(self):
        """Serve the entries held since :meth:`suspend` again."""
        self._suspended = False

    @property
    def suspended(self):
        """True between :meth:`suspend` and :meth:`resume`."""
        return self._suspended

    def get_stale(self, key, max_age, default=None, *, bint expired=True):
        """The value of ``key`` if stored less than ``max_age`` s ago, expired or not
        (with ``expired=False``: only while live)."""
        cdef PyObject* p
        cdef _Entry held
        cdef double age, now
        if not isinstance(max_age, (int, float)):
            raise TypeError(f"max_age must be a number of seconds, not {type(max_age).__name__}")
        age = max_age
        if not (age >= 0.0):
            raise ValueError(f"max_age must be >= 0 seconds, got {max_age!r}")
        p = PyDict_GetItemWithError(self._map, key)
        if p is NULL:
            return default
        held = <_Entry>p  # a user clock runs Python code: keep the entry alive
        now = self._now()
        if held.weight >= 0 and now - held.stored_at < age and (expired or now < held.expires_at):
            return held.value
        return default

    def set_refresh_ahead(self, fraction, handler):
        """Turn refresh-ahead on (a fraction in (0, 1) and a handler) or off."""
        cdef double frac = _parse_fraction(fraction)
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable or None, not {type(handler).__name__}")
        if handler is None:
            frac = 0.0
        self._due_frac = frac
        self._on_due = handler if frac != 0.0 else None

    @property
    def refresh_fraction(self):
        """The refresh-ahead fraction (0.0: off)."""
        return self._due_frac

    @property
    def stale_window(self):
        """Seconds entries are kept after their store for :meth:`get_stale` (0.0: none)."""
        return self._stale_window

    # ------------------------------------------------------------------ writes

    def set(self, key, value, weight, ttl=None):
        """Store ``value`` under ``key``; False if it is heavier than ``max_weight``."""
        cdef Py_ssize_t w = _parse_weight(weight)
        cdef double t
        if ttl is None:
            t = self._default_ttl
        else:
            t = _parse_ttl(ttl, "ttl")
        return self._store(key, value, w, t)

    def purge_expired(self):
        """Remove every expired entry now (but those the stale window keeps); return how many."""
        cdef PyObject* grave = NULL
        cdef Py_ssize_t n
        cdef double now = self._now()
        try:
            n = self._purge(now, &grave)
        finally:
            _release(grave)
        return n

    def invalidate(self, key):
        """Remove ``key``; always fences in-flight fills of it. True if an entry was removed."""
        hash(key)
        self._bump(key)
        return self._remove_key(key) == 1

    def invalidate_all(self):
        """Remove every entry and reject every in-flight fill; return the count removed."""
        cdef dict old = self._drop_all()
        cdef Py_ssize_t n = PyDict_Size(old)
        self.invalidations += <unsigned long long>n
        self._floor_all()
        old = None
        return n

    def invalidate_where(self, predicate):
        """Remove the keys for which ``predicate(key)`` is true (on a snapshot of keys)."""
        cdef Py_ssize_t n = 0
        if not callable(predicate):
            raise TypeError(f"predicate must be callable, not {type(predicate).__name__}")
        try:
            for k in self._keys():
                if predicate(k):
                    n += self._remove_key(k)
        finally:
            self._floor_all()
        return n

    def invalidate_prefix(self, prefix):
        """Remove str keys (and tuple keys whose first item is a str) starting with prefix."""
        cdef Py_ssize_t n = 0
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        try:
            for k in self._keys():
                if _prefix_match(k, <str>prefix):
                    n += self._remove_key(k)
        finally:
            self._floor_all()
        return n

    # ------------------------------------------------------------------ fenced fills

    def begin_fill(self):
        """Register an in-flight read-through fill; return its token."""
        self._inflight += 1
        return self._gen

    def end_fill(self):
        """Unregister a fill started by ``begin_fill`` (after its ``set_if_fresh``)."""
        if self._inflight > 0:
            self._inflight -= 1
        if self._inflight == 0:
            self._fence.clear()

    def set_if_fresh(self, key, value, weight, token, ttl=None):
        """``set`` unless ``key`` was written or invalidated after ``token`` was taken."""
        cdef Py_ssize_t w = _parse_weight(weight)
        cdef double t
        cdef long long tok
        cdef PyObject* f
        if ttl is None:
            t = self._default_ttl
        else:
            t = _parse_ttl(ttl, "ttl")
        tok = _parse_token(token)
        f = PyDict_GetItemWithError(self._fence, key)
        if tok < self._floor or (f is not NULL and <long long>(<object>f) > tok):
            self.stale_fills += 1
            return False
        return self._store(key, value, w, t)

    def set_many_if_fresh(self, keys, values, weights, token, ttl=None, *, extra_weight=0):
        """``set_if_fresh`` of each ``(key, value, weight + extra_weight)`` in order; return
        how many were stored."""
        # Private tuples: freeing a replaced value may run Python code (see the module
        # docstring), which must not resize what is being iterated.
        cdef tuple ks = tuple(keys)
        cdef tuple vs = tuple(values)
        cdef tuple ws = tuple(weights)
        cdef Py_ssize_t i, n = len(ks)
        cdef Py_ssize_t stored = 0
        cdef Py_ssize_t extra
        cdef double t
        cdef long long tok
        cdef PyObject* f
        if len(vs) != n or len(ws) != n:
            raise ValueError(
                f"keys, values and weights differ in length ({n}, {len(vs)}, {len(ws)})"
            )
        extra = _parse_weight(extra_weight)
        if ttl is None:
            t = self._default_ttl
        else:
            t = _parse_ttl(ttl, "ttl")
        tok = _parse_token(token)
        for i in range(n):  # check everything first: an error stores nothing
            _parse_weight(ws[i])
        for i in range(n):
            PyObject_Hash(ks[i])
        for i in range(n):
            key = ks[i]
            f = PyDict_GetItemWithError(self._fence, key)
            if tok < self._floor or (f is not NULL and <long long>(<object>f) > tok):
                self.stale_fills += 1
            elif self._store(key, vs[i], _add_weights(_parse_weight(ws[i]), extra), t):
                stored += 1
        return stored

    @property
    def inflight(self):
        """Number of fills begun and not yet ended."""
        return self._inflight

    @property
    def fence_size(self):
        """Number of keys currently fenced (diagnostics)."""
        return PyDict_Size(self._fence)

    # ------------------------------------------------------------------ introspection

    @property
    def weight(self):
        """Current total weight (expired-but-unpurged entries included)."""
        return self._weight

    @property
    def max_weight(self):
        """The weight budget."""
        return self._max_weight

    @property
    def default_ttl(self):
        """Default TTL in seconds, or None when entries never expire by default."""
        if self._default_ttl == INFINITY:
            return None
        return self._default_ttl

    def stats(self):
        """All counters plus ``entries``, ``weight`` and ``max_weight``."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "inserts": self.inserts,
            "evictions": self.evictions,
            "expirations": self.expirations,
            "invalidations": self.invalidations,
            "rejections": self.rejections,
            "stale_fills": self.stale_fills,
            "entries": PyDict_Size(self._map),
            "weight": self._weight,
            "max_weight": self._max_weight,
        }

    def reset_stats(self):
        """Zero every counter (entries and weights are untouched)."""
        self._zero_stats()

    def __repr__(self):
        return (
            f"LRUCache(entries={PyDict_Size(self._map)}, weight={self._weight}, "
            f"max_weight={self._max_weight})"
        )
