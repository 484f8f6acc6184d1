"""The Lua scripts of the direct-Redis operations, and how they are run.

Each script runs atomically in one round trip (EVALSHA; EVAL loads it when the
server's script cache is cold). Every key a script touches is passed in ``KEYS``,
built by :class:`~cal_redis.keys.KeyBuilder`; no script formats a key. Scripts
answer integers or bulk strings only (never Lua booleans, whose RESP3 form differs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rexc

__all__ = (
    "Lua",
    "PUT",
    "AGENT_SET",
    "SESSIONS_PRUNE",
    "WS_ADD",
    "WS_OWNER",
    "WS_REMOVE",
    "WS_LIST",
)

# Helpers shared by the scripts below (unused locals cost nothing).
_PRELUDE = r"""
-- Do a's fields unknown to this library (keys absent from `known`) equal b's?
local function foreign_equal(a, b, known)
  for k, v in pairs(a) do
    if known[k] == nil then
      local w = b[k]
      if w == nil then return false end
      if v ~= w and (type(v) ~= 'table' or type(w) ~= 'table'
                     or cjson.encode(v) ~= cjson.encode(w)) then
        return false
      end
    end
  end
  return true
end

-- May `new` replace the stored `old` without losing a field of it? nil = yes;
-- otherwise the reply: 0 (the value merged over vanished: start over) or `old`
-- (the client merges over it and retries).
-- First attempt (expect == ''): yes when `old` has no key that `new` lacks.
-- Retry: `expect` is the stored value the client merged over and `own` the
-- caller's JSON (its keys are the fields this library knows); yes when the
-- fields unknown to this library are still those of `expect` -- so concurrent
-- writers of known fields never make each other retry.
local function guard(old, new, expect, own)
  if not old then
    if expect == '' then return nil end
    return 0
  end
  if old == expect then return nil end
  local ok, o = pcall(cjson.decode, old)
  if not ok or type(o) ~= 'table' then return old end
  if expect == '' then
    local n = cjson.decode(new)
    for k in pairs(o) do
      if n[k] == nil then return old end
    end
    return nil
  end
  local ok2, e = pcall(cjson.decode, expect)
  if not ok2 or type(e) ~= 'table' then return old end
  local known = cjson.decode(own)
  if foreign_equal(o, e, known) and foreign_equal(e, o, known) then return nil end
  return old
end

-- Set the top-level "connected" field of the AgentStatus JSON at `skey`, if one
-- exists, by editing the text (no re-encoding: other fields stay byte-identical).
-- Each candidate edit is verified by decoding (a nested look-alike is skipped);
-- when no edit can be made safely nothing is written.
local function set_connected(skey, want)
  local raw = redis.call('GET', skey)
  if not raw then return end
  local ok, obj = pcall(cjson.decode, raw)
  if not ok or type(obj) ~= 'table' then return end
  local cur = obj['connected']
  if cur == want then return end
  local function try(cand)
    local ok2, chk = pcall(cjson.decode, cand)
    if ok2 and type(chk) == 'table' and chk['connected'] == want then
      redis.call('SET', skey, cand, 'KEEPTTL')
      return true
    end
    return false
  end
  if cur == nil then
    local i = string.find(raw, '{', 1, true)
    if not i then return end
    local rest = string.sub(raw, i + 1)
    local sep = ','
    if string.match(rest, '^%s*}') then sep = '' end
    try(string.sub(raw, 1, i) .. '"connected":' .. tostring(want) .. sep .. rest)
    return
  end
  if type(cur) ~= 'boolean' then return end
  local pat = '"connected"(%s*):(%s*)' .. tostring(cur)
  local init = 1
  while true do
    local s, e, a, b = string.find(raw, pat, init)
    if not s then return end
    local cand = string.sub(raw, 1, s - 1) .. '"connected"' .. a .. ':' .. b
                 .. tostring(want) .. string.sub(raw, e + 1)
    if try(cand) then return end
    init = e + 1
  end
end
"""

#: Merge-safe write of one JSON value (string key or hash field), with optional extras.
#: KEYS[1] the string key or hash; KEYS[2] (optional) a set to add ARGV[7] to.
#: ARGV: expect, json, own (see guard), field ('' = string key), px ('' = keep the
#: TTL), must_exist ('1' = answer -1 when absent), member, channel ('' = none), event.
_PUT = r"""
local field = ARGV[4]
local old
if field == '' then old = redis.call('GET', KEYS[1])
else old = redis.call('HGET', KEYS[1], field) end
if ARGV[6] == '1' and not old then return -1 end
local g = guard(old, ARGV[2], ARGV[1], ARGV[3])
if g then return g end
if field ~= '' then redis.call('HSET', KEYS[1], field, ARGV[2])
elseif ARGV[5] == '' then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5]) end
if KEYS[2] then redis.call('SADD', KEYS[2], ARGV[7]) end
if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[9]) end
return 1
"""

#: Agent status and its set memberships and name, atomically (merge-safe status JSON).
#: KEYS: status, registered, available, connected, by_user.
#: ARGV: expect, json, own (see guard), user_id, registered, available, connected
#: ('1'/'0'), name.
_AGENT_SET = r"""
local old = redis.call('GET', KEYS[1])
local g = guard(old, ARGV[2], ARGV[1], ARGV[3])
if g then return g end
redis.call('SET', KEYS[1], ARGV[2])
for i = 2, 4 do
  if ARGV[i + 3] == '1' then redis.call('SADD', KEYS[i], ARGV[4])
  else redis.call('SREM', KEYS[i], ARGV[4]) end
end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[5], ARGV[4], ARGV[8])
else redis.call('HDEL', KEYS[5], ARGV[4]) end
return 1
"""

#: Drop the members of the active-sessions set whose session key is gone; answer the
#: live ones. KEYS: active set, then one session key per ARGV id (same order).
_SESSIONS_PRUNE = r"""
local alive = {}
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 1 then alive[#alive + 1] = ARGV[i]
  else redis.call('SREM', KEYS[1], ARGV[i]) end
end
return alive
"""

#: Register a websocket connection. A connection id held by another account or user
#: is refused (answer 0): no tenant can take over another's routing entry.
#: KEYS: ws connections hash, account's connection index, agents:connected, status.
#: ARGV: connection_id, WsConnection JSON, user_id, account_id.
_WS_ADD = r"""
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if not ok or type(rec) ~= 'table' or rec['account_id'] ~= ARGV[4]
     or rec['user_id'] ~= ARGV[3] then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
set_connected(KEYS[4], true)
return 1
"""

#: The user of a connection of this account ('' if none): the index entry, else a
#: connection record that names this account. Read-only.
#: KEYS: ws connections hash, account's index. ARGV: connection_id, account_id.
_WS_OWNER = r"""
local u = redis.call('HGET', KEYS[2], ARGV[1])
if u then return u end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and rec['account_id'] == ARGV[2]
     and type(rec['user_id']) == 'string' then
    return rec['user_id']
  end
end
return ''
"""

#: Remove one connection of this account and user; the user leaves agents:connected
#: (and its status "connected" turns false) only when no other connection of the
#: user is left in the account. A record of another account is never touched.
#: Answers 1 removed, 0 nothing to remove (or moved to another node), -1 stale view.
#: KEYS: ws connections hash, account's index, agents:connected, status of the user.
#: ARGV: connection_id, user_id, account_id, node_id ('' = any node).
_WS_REMOVE = r"""
local idx_user = redis.call('HGET', KEYS[2], ARGV[1])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local mine = false
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and rec['account_id'] == ARGV[3] then
    if rec['user_id'] ~= ARGV[2] then return -1 end
    if ARGV[4] ~= '' and rec['node_id'] ~= ARGV[4] then return 0 end
    mine = true
  end
end
if not mine then
  if not idx_user then return 0 end
  if idx_user ~= ARGV[2] then return -1 end
end
if mine then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('HDEL', KEYS[2], ARGV[1])
for _, u in ipairs(redis.call('HVALS', KEYS[2])) do
  if u == ARGV[2] then return 1 end
end
redis.call('SREM', KEYS[3], ARGV[2])
set_connected(KEYS[4], false)
return 1
"""

#: The connection records of one account, through its index (read-only).
#: KEYS: account's index, ws connections hash.
_WS_LIST = r"""
local ids = redis.call('HKEYS', KEYS[1])
local out = {}
for i = 1, #ids, 500 do
  local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
  local vals = redis.call('HMGET', KEYS[2], unpack(chunk))
  for j = 1, #chunk do
    if vals[j] then out[#out + 1] = vals[j] end
  end
end
return out
"""


class Lua:
    """One script: its text (prelude included) and SHA1, run with EVALSHA."""

    __slots__ = ("name", "sha", "text")

    def __init__(self, name: str, body: str) -> None:
        self.name = name
        self.text = _PRELUDE + body
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()

    async def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA; on NOSCRIPT (nothing ran) EVAL, which also caches the script."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:
            return await client.eval(self.text, len(keys), *keys, *args)

    def queue(self, pipe: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue the script on a pipeline (EVAL: a pipeline cannot recover a NOSCRIPT)."""
        pipe.eval(self.text, len(keys), *keys, *args)

    def __repr__(self) -> str:
        return f"<Lua {self.name} {self.sha[:8]}>"


PUT = Lua("put", _PUT)
AGENT_SET = Lua("agent_set", _AGENT_SET)
SESSIONS_PRUNE = Lua("sessions_prune", _SESSIONS_PRUNE)
WS_ADD = Lua("ws_add", _WS_ADD)
WS_OWNER = Lua("ws_owner", _WS_OWNER)
WS_REMOVE = Lua("ws_remove", _WS_REMOVE)
WS_LIST = Lua("ws_list", _WS_LIST)
