"""Connection options of :meth:`~cal_redis.CallableCache.connect` and the checks of an
application's own client (``client=``), all made before any I/O.

Keyword options go to every redis-py connection the cache makes (commands, the event
subscriber, each node of a cluster, the primary behind Sentinel): TLS (``ssl=True``,
``ssl_context``... the ``ssl_*`` options), ``credential_provider``, ``client_name``,
``username``/``password``, socket options. They are checked against the parameters
redis-py's connection classes take, then against what the library needs:

- nothing that makes redis-py retry a command (``retry`` with retries,
  ``retry_on_error``, ``retry_on_timeout=True``): a write re-sent after a lost reply
  could run twice (the library retries idempotent reads itself, never writes);
- replies as bytes (``decode_responses=True`` is refused: the codec decodes them) and
  UTF-8 (``encoding``: the key builder's keys must be the same bytes everywhere);
- what :class:`~cal_redis.config.CacheConfig` owns is set there (``max_connections``,
  timeouts, ``protocol``), and what the URL says stays in the URL (host, port, db).

Each refusal is a :class:`~cal_redis.errors.ConfigurationError` saying why.
"""

from __future__ import annotations

import difflib
import inspect
import ssl
from collections.abc import Mapping
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    RedisSSLContext,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)

from .. import errors
from ..config import CacheConfig, redact_url

__all__ = (
    "OWNED_OPTIONS",
    "check_client",
    "check_options",
    "client_url",
    "connection_kwargs",
    "given_context",
    "retries_of",
)

#: Options the library sets from its configuration: option -> where to set it instead.
OWNED_OPTIONS: Final[Mapping[str, str]] = {
    "max_connections": "CacheConfig.max_connections",
    "socket_timeout": "CacheConfig.socket_timeout",
    "socket_connect_timeout": "CacheConfig.connect_timeout",
    "timeout": "CacheConfig.pool_timeout",
    "pool_timeout": "CacheConfig.pool_timeout",
    "protocol": "CacheConfig.protocol",
}

#: Options that are part of the URL.
_IN_URL: Final = {
    "host": "the URL's host",
    "port": "the URL's port",
    "db": "the URL's database (redis://host:6379/<db>)",
    "path": "a unix:///path URL",
    "unix_socket_path": "a unix:///path URL",
}

#: Options that would replace what the library builds itself.
_LIBRARY: Final = {
    "connection_pool": "the cache builds its own pool (pass client= to use yours)",
    "connection_class": "the cache picks the connection class (TLS: ssl=True or rediss://)",
    "parser_class": "the cache reads replies with redis-py's parser (hiredis when installed)",
    "encoder_class": "the codec needs redis-py's own encoder",
    "redis_connect_func": "the cache connects and subscribes its connections itself",
    "single_connection_client": "the cache runs commands concurrently on a pool",
    "auto_close_connection_pool": "the cache closes the pools it made on close()",
}

_TLS_CLASSES: Final = (SSLConnection,)

class _GivenContext:
    """Stands in for redis-py's ``RedisSSLContext`` on a TLS connection: hands out the
    application's own ``ssl.SSLContext``, as it is."""

    __slots__ = ("context",)

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def get(self) -> ssl.SSLContext:
        return self.context

    def __getattr__(self, name: str) -> None:
        # What redis-py's TLS connections read from their context holder besides get():
        # the settings its RedisSSLContext takes.
        if name in _accepted(RedisSSLContext):
            return None  # set on the context itself
        raise AttributeError(name)


_given_classes: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def given_context(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls``, a redis-py TLS connection class, taking ``ssl_context=``: an
    ``ssl.SSLContext`` every connection then uses as it is. One subclass per class."""
    made = _given_classes.get(cls)
    if made is None:
        def __init__(self: Any, *args: Any, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
            cls.__init__(self, *args, **kwargs)
            self.ssl_context = _GivenContext(ssl_context)

        made = _given_classes[cls] = type(cls.__name__, (cls,), {
            "__init__": __init__,
            "__module__": __name__,
            "__doc__": f"{cls.__name__} over the application's ssl.SSLContext.",
        })
    return made


def _names(cls: type) -> frozenset[str]:
    """The keyword parameters of ``cls`` and its bases (redis-py passes ``**kwargs`` up)."""
    out: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and param.name != "self":
                out.add(param.name)
    return frozenset(out)


_ACCEPTED: dict[type, frozenset[str]] = {}


def _accepted(cls: type) -> frozenset[str]:
    """:func:`_names` of ``cls``, read once."""
    names = _ACCEPTED.get(cls)
    if names is None:
        names = _ACCEPTED[cls] = _names(cls)
    return names


def _every_option() -> frozenset[str]:
    return (_accepted(Connection) | _accepted(SSLConnection)
            | _accepted(UnixDomainSocketConnection) | {"ssl", "ssl_context"})


def retries_of(retry: Any) -> int:
    """How many times redis-py's ``Retry`` object ``retry`` re-sends (0 for None)."""
    if retry is None:
        return 0
    getter = getattr(retry, "get_retries", None)
    value = getter() if callable(getter) else getattr(retry, "_retries", 0)
    return int(value)


def _refusal(name: str, value: Any, config: CacheConfig) -> str | None:
    """Why option ``name=value`` is refused, or None when it is fine."""
    if name == "protocol":
        if value in (config.protocol, str(config.protocol)):
            return None
        return (f"protocol={value!r}: the cache speaks RESP{config.protocol} "
                "(set CacheConfig.protocol to 2 or 3)")
    if name in OWNED_OPTIONS:
        return f"{name}: set by the cache from {OWNED_OPTIONS[name]}"
    if name in _IN_URL:
        return f"{name}: give it in the URL ({_IN_URL[name]})"
    if name in _LIBRARY:
        return f"{name}: {_LIBRARY[name]}"
    if name == "retry" and retries_of(value) > 0:
        return (f"retry={value!r} re-sends failed commands ({retries_of(value)} retries): a "
                "write re-sent after a lost reply could run twice; the cache retries idempotent "
                "reads itself (CacheConfig.read_retries) and never writes")
    if name == "retry_on_error" and value:
        return ("retry_on_error makes redis-py re-send commands that failed with those errors: "
                "a write re-sent after a lost reply could run twice")
    if name == "retry_on_timeout" and value:
        return ("retry_on_timeout=True makes redis-py re-send a command that timed out: a "
                "write that did run would run twice")
    if name == "ssl_context" and not isinstance(value, ssl.SSLContext):
        return f"ssl_context must be an ssl.SSLContext, got {type(value).__qualname__}"
    if name == "decode_responses" and value:
        return "decode_responses=True: the cache's codec needs the replies as bytes"
    if name == "encoding" and str(value).lower().replace("-", "").replace("_", "") != "utf8":
        return f"encoding={value!r}: keys and values are UTF-8 on every instance"
    if name == "encoding_errors" and value != "strict":
        return f"encoding_errors={value!r}: keys and values are strict UTF-8"
    return None


def check_options(options: Mapping[str, Any], config: CacheConfig) -> dict[str, Any]:
    """The keyword options of ``connect()`` as they go to redis-py, or a
    :class:`~cal_redis.errors.ConfigurationError` naming each problem (an unknown name,
    or one that would break the library's guarantees, and why). Options equal to what
    the library sets anyway (``retry`` without retries, ``decode_responses=False``, the
    configured ``protocol``...) are dropped."""
    known = _every_option()
    problems: list[str] = []
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name not in known and name not in OWNED_OPTIONS and name not in _LIBRARY \
                and name not in _IN_URL:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{name}: not an option of redis-py's connections{hint}")
            continue
        why = _refusal(name, value, config)
        if why is not None:
            problems.append(why)
        elif name in ("retry", "retry_on_error", "retry_on_timeout", "decode_responses",
                      "protocol", "encoding", "encoding_errors"):
            continue  # what the library sets anyway
        else:
            out[name] = value
    if problems:
        raise errors.ConfigurationError("connection options refused: " + "; ".join(problems))
    return out


def connection_kwargs(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """redis-py's connection arguments for the server at ``url`` with the (already
    checked) keyword ``options``: the URL's own (host, port, db, credentials, query
    options, the connection class) plus the options, checked together.

    A :class:`~cal_redis.errors.ConfigurationError` when the URL is invalid, an option
    is also in the URL, a TLS option comes without TLS, or the connection class of the
    URL (TCP, TLS, unix socket) does not take an option.
    """
    safe = redact_url(url)
    try:
        kwargs: dict[str, Any] = dict(parse_url(url))
    except ValueError as err:
        raise errors.ConfigurationError(f"invalid Redis URL {safe!r}: {err}") from err
    if not options:
        return kwargs
    extra = dict(options)
    twice = sorted(set(kwargs) & set(extra) - {"connection_class"})
    if twice:
        raise errors.ConfigurationError(
            f"{', '.join(twice)}: given both in the URL {safe!r} and as a keyword option"
        )
    cls: type[AbstractConnection] = kwargs.get("connection_class", Connection)
    tls = extra.pop("ssl", None)
    context = extra.pop("ssl_context", None)
    if context is not None:
        if tls is False:
            raise errors.ConfigurationError("ssl=False, but an ssl_context= is given (TLS)")
        if not issubclass(cls, _TLS_CLASSES):
            tls = True  # ssl_context implies TLS, as ssl=True does
    if tls:
        if issubclass(cls, UnixDomainSocketConnection):
            raise errors.ConfigurationError(f"ssl=True: {safe!r} is a unix socket, not TCP")
        cls = SSLConnection
        kwargs["connection_class"] = cls
    elif tls is not None and issubclass(cls, _TLS_CLASSES):
        raise errors.ConfigurationError(f"ssl=False, but {safe!r} is a TLS URL (rediss://)")
    accepted = _accepted(cls)
    problems = []
    for name in extra:
        if name in accepted:
            continue
        if name.startswith("ssl_"):
            problems.append(f"{name}: a TLS option, but {safe!r} is not TLS "
                            "(use rediss:// or ssl=True)")
        else:
            kind = "a unix-socket" if issubclass(cls, UnixDomainSocketConnection) else "a TCP"
            problems.append(f"{name}: not an option of {kind} connection ({safe!r})")
    if context is not None:
        problems += [f"{name}: ssl_context replaces the ssl_* options (set it on the context)"
                     for name in extra if name.startswith("ssl_")]
    if problems:
        raise errors.ConfigurationError("connection options refused: " + "; ".join(problems))
    if context is not None:
        kwargs["connection_class"] = given_context(cls)
        extra["ssl_context"] = context
    if extra.get("credential_provider") is not None and (
        kwargs.get("username") or kwargs.get("password")
        or extra.get("username") or extra.get("password")
    ):
        raise errors.ConfigurationError(
            "credential_provider replaces username/password: give one or the other "
            f"(the URL {safe!r} or the options carry credentials)"
        )
    return {**extra, **kwargs}


def check_client(client: Any, config: CacheConfig) -> None:
    """Refuse (:class:`~cal_redis.errors.ConfigurationError`, saying why) an application's
    client the cache cannot use as its own: not a ``redis.asyncio.Redis``, a cluster or
    Sentinel client, one that retries commands, decodes replies or encodes other than
    UTF-8. Its protocol (RESP2 or 3) is its own: :attr:`CacheConfig.protocol` applies
    to the connections the cache makes."""
    from redis.asyncio.sentinel import SentinelConnectionPool

    if isinstance(client, aioredis.RedisCluster):
        raise errors.ConfigurationError(
            "client=: a redis.asyncio.RedisCluster is not supported; connect with a "
            "redis+cluster:// URL (connection options as keyword arguments)"
        )
    if not isinstance(client, aioredis.Redis):
        raise errors.ConfigurationError(
            f"client= must be a redis.asyncio.Redis, got {type(client).__module__}."
            f"{type(client).__qualname__}"
        )
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        raise errors.ConfigurationError(
            "client=: a client from redis.asyncio.sentinel is not supported: the cache must "
            "follow failovers itself (+switch-master); connect with a redis+sentinel:// URL"
        )
    kwargs = pool.connection_kwargs
    problems = []
    for name in ("retry", "retry_on_error", "retry_on_timeout", "decode_responses",
                 "encoding", "encoding_errors"):
        if name in kwargs:
            why = _refusal(name, kwargs[name], config)
            if why is not None:
                problems.append(why)
    if problems:
        hint = ""
        if any(p.startswith("retry=") for p in problems):
            hint = (" (make it with retry=Retry(NoBackoff(), 0); redis-py's default "
                    "Retry re-sends)")
        raise errors.ConfigurationError("client= refused: " + "; ".join(problems) + hint)


def client_url(client: Any) -> str:
    """A URL naming the server of an application's client (no credentials), for
    ``repr``, logs and metrics."""
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0) or 0
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    cls = client.connection_pool.connection_class
    scheme = "rediss" if isinstance(cls, type) and issubclass(cls, _TLS_CLASSES) else "redis"
    host = kwargs.get("host", "localhost")
    where = f"[{host}]" if ":" in str(host) else host
    return f"{scheme}://{where}:{kwargs.get('port', 6379)}/{db}"
