# cython: language_level=3
"""C-level layouts of the compiled L1 cache (see _lru_c.pyx, documented in _lru_py.py)."""

cimport cython
from cpython.object cimport PyObject


@cython.final
cdef class _Entry:
    # The cache's ``_map`` dict owns every live entry; the four links are borrowed
    # raw pointers (no reference counting) into the two intrusive lists.
    cdef object key
    cdef object value
    cdef Py_ssize_t weight        # -1 once the entry has been detached from the cache
    cdef double expires_at        # INFINITY = never expires (then not in the expiry list)
    cdef double stored_at         # when it was stored (get_stale's age)
    cdef double refresh_at        # due for refresh-ahead from then (= expires_at: not due)
    cdef double purge_at          # kept until then (>= expires_at; the expiry list's order)
    cdef PyObject* prev           # LRU list, towards the most recent end (head)
    cdef PyObject* next           # LRU list, towards the least recent end (tail)
    cdef PyObject* eprev          # expiry list, towards the soonest purge_at (head)
    cdef PyObject* enext          # expiry list, towards the latest purge_at (tail)


@cython.final
cdef class LRUCache:
    cdef dict _map                # key -> _Entry (owns the entries)
    cdef PyObject* _head          # most recently used
    cdef PyObject* _tail          # least recently used
    cdef PyObject* _ehead         # soonest finite purge_at
    cdef PyObject* _etail         # latest finite purge_at
    cdef object _clock            # user clock, or None for the built-in C clock
    cdef bint _c_clock
    cdef double _default_ttl      # INFINITY = never expires
    cdef Py_ssize_t _max_weight
    cdef Py_ssize_t _weight
    # fenced fills
    cdef long long _gen
    cdef long long _floor
    cdef Py_ssize_t _inflight
    cdef Py_ssize_t _max_fence
    cdef dict _fence
    cdef bint _suspended          # every entry reads as a miss (kept)
    cdef double _stale_window     # seconds an entry is kept after its store (get_stale)
    cdef double _due_frac         # refresh-ahead fraction of the TTL (0: off)
    cdef object _on_due           # refresh-ahead handler, or None
    # counters
    cdef readonly unsigned long long hits
    cdef readonly unsigned long long misses
    cdef readonly unsigned long long inserts
    cdef readonly unsigned long long evictions
    cdef readonly unsigned long long expirations
    cdef readonly unsigned long long invalidations
    cdef readonly unsigned long long rejections
    cdef readonly unsigned long long stale_fills

    cdef inline double _now(self) except? -1.0
    cdef inline void _lru_unlink(self, PyObject* p) noexcept
    cdef inline void _lru_push_front(self, PyObject* p) noexcept
    cdef inline void _exp_unlink(self, PyObject* p) noexcept
    cdef inline void _exp_insert(self, PyObject* p) noexcept
    cdef int _detach(self, PyObject* p, PyObject** grave) except -1
    cdef Py_ssize_t _purge(self, double now, PyObject** grave) except -1
    cdef int _bump(self, object key) except -1
    cdef void _floor_all(self) noexcept
    cdef object _store(self, object key, object value, Py_ssize_t w, double ttl)
    cdef int _remove_key(self, object key) except -1
    cdef object _get(self, object key, object default)
    cdef object _due(self, PyObject* p, object key)
    cdef object _lookup_live(self, object key, object missing, bint touch)
    cdef dict _drop_all(self)
    cdef list _keys(self)
    cdef void _zero_stats(self) noexcept
