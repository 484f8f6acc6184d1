"""The Lua scripts: the one write script and those of the direct-Redis operations.

Each script runs atomically in one round trip (EVALSHA; EVAL loads it when the
server's script cache is cold: :meth:`cal_redis.remote.Remote.script`). No script
decodes and re-encodes a JSON value it stores (Redis' cjson is lossy: it turns
``12345678901234567`` into ``1.2345678901235e+16`` and ``[]`` into ``{}``); merges are
made in Python with msgspec and checked here byte for byte. Every key a script touches is passed in ``KEYS``,
built by :class:`~cal_redis.keys.KeyBuilder`; no script formats a key. Scripts
answer integers or bulk strings only (never Lua booleans, whose RESP3 form differs).
"""

from __future__ import annotations

from ..remote import Script

__all__ = (
    "WRITE",
    "AGENT_SET",
    "LOG_PUBLISH",
    "LOG_READ",
    "SESSIONS_PRUNE",
    "WS_ADD",
    "WS_CLAIM",
    "WS_INDEX",
    "WS_OWNER",
    "WS_RECORD_USER",
    "WS_REMOVE",
    "WS_UNINDEX",
    "WS_UNROUTE",
    "WS_LIST",
)

# The compare-and-set of the write scripts: nil to go on (and, in mode 'k', the
# stored object decoded, to read its idents), else the refusal to answer. Decoding
# only reads field names and strings: nothing decoded is ever stored.
_CAS = r"""
-- Equal JSON values as decoded, refusing what cjson cannot decode exactly (numbers
-- beyond 2^53): such a value is never taken for unchanged.
local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) == 'number' then return a == b and a > -9007199254740992 and a < 9007199254740992 end
  if type(a) ~= 'table' then return a == b end
  for k, v in pairs(a) do
    if b[k] == nil or not same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local function known_set(list)
  local known = {}
  for f in string.gmatch(list, '[^,]+') do known[f] = true end
  return known
end

local function decode_object(raw)
  local ok, o = pcall(cjson.decode, raw)
  if ok and type(o) == 'table' then return o end
  return nil
end

local function cas(old, mode, expect)
  if mode == 'a' then
    if old then return old end
  elseif mode == 'e' then
    if not old then return 0 end
    if old ~= expect then return old end
  elseif mode == 'x' and not old then
    return 0
  elseif (mode == 'k' or mode == 'x') and old then
    local o = decode_object(old)
    if not o then return old end
    local known = known_set(expect)
    for f in pairs(o) do
      if not known[f] then return old end
    end
    return nil, o
  elseif mode == 'f' then
    if not old then return 0 end
    local nl = string.find(expect, '\n', 1, true)
    local exp = string.sub(expect, nl + 1)
    if old == exp then return nil end
    local o, e = decode_object(old), decode_object(exp)
    if not o or not e then return old end
    local known = known_set(string.sub(expect, 1, nl - 1))
    for f, v in pairs(o) do
      if not known[f] and (e[f] == nil or not same(v, e[f])) then return old end
    end
    for f in pairs(e) do
      if not known[f] and o[f] == nil then return old end
    end
    return nil, o
  end
  return nil
end
"""

# Append an event to its log (a capped Redis Stream: MAXLEN ~ bounds a burst, MINID
# drops what is older than the retention) and publish it with the log entry's id as
# "log_id" (the id is only known here). `logkey` nil: publish only. The event is a JSON
# object as encoded by the library (it ends with '}' and holds no "log_id").
_LOG = r"""
local function log_publish(logkey, channel, event, retention, maxlen)
  if logkey then
    local id = redis.call('XADD', logkey, 'MAXLEN', '~', maxlen, '*', 'e', event)
    local ms = tonumber(string.match(id, '^(%d+)'))
    redis.call('XTRIM', logkey, 'MINID', string.format('%.0f-0', ms - retention))
    event = string.sub(event, 1, -2) .. ',"log_id":"' .. id .. '"}'
  end
  return redis.call('PUBLISH', channel, event)
end
"""

# Helpers shared by the direct-Redis scripts below (unused locals cost nothing).
_PRELUDE = _CAS + r"""
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

#: The one write: a value (hash field or string key), its ident mappings, a member
#: set and its event, atomically, as a compare-and-set against the stored value the
#: write was computed from. Values are compared byte for byte and never re-encoded
#: here. Every key is in KEYS, so all of them can share one cluster slot.
#: KEYS[1] the value's key (a hash if ARGV[3] ~= '', else a string key);
#:   flag 'i': KEYS[2] the idents hash; flag 'm': a set of members (the last key, or
#:   the one before the log); flag 'l': the last key, the event's log (a stream).
#: ARGV[1] mode: 'a' the value must be absent; 'e' it must equal ARGV[2]; 'k' it must
#:   be absent or a JSON object with no field outside ARGV[2] (comma-separated field
#:   names; its idents in the fields ARGV[12] names are then dropped); 'x' as 'k' but
#:   the value must exist; 'f' (a replacing write merged over a stored value) its
#:   fields outside the known ones must be those of the value merged over (ARGV[2]:
#:   known field names, a newline, that value), so writers that replace only known
#:   fields never make each other retry; '*' anything.
#: ARGV[3] hash field ('' = string key); ARGV[4] new value; ARGV[5] 's' set / 'd' delete;
#: ARGV[6] TTL of a string key: '' keep it (KEEPTTL), '-' none, else PX milliseconds;
#: ARGV[7] channel ('' = no event); ARGV[8] the event; ARGV[9] the event to publish
#:   instead when no value was stored ('' = ARGV[8]); ARGV[10] flags;
#: ARGV[11] the id (what idents map to, the member); ARGV[12] ident field names;
#: ARGV[13] the log's retention (ms), ARGV[14] its approximate cap (entries);
#: ARGV[15] n, then n idents to drop (only those still mapping to the id), then the
#:   idents to add.
#: Reply: 1 written (a value was stored before), 2 written (none was), 0 refused
#: (a value was expected, none is stored), the stored value (refused: it differs).
_WRITE = r"""
local field = ARGV[3]
local old
if field == '' then old = redis.call('GET', KEYS[1])
else old = redis.call('HGET', KEYS[1], field) end
local refused, o = cas(old, ARGV[1], ARGV[2])
if refused then return refused end
local stale = {}
if o then
  for f in string.gmatch(ARGV[12], '[^,]+') do
    local v = o[f]
    if type(v) == 'string' and v ~= '' then stale[#stale + 1] = v end
  end
end
local flags, id = ARGV[10], ARGV[11]
local logkey, members = nil, #KEYS
if string.find(flags, 'l', 1, true) then logkey = KEYS[#KEYS]; members = #KEYS - 1 end
if ARGV[5] == 'd' then
  if field == '' then redis.call('DEL', KEYS[1]) else redis.call('HDEL', KEYS[1], field) end
  if string.find(flags, 'm', 1, true) then redis.call('SREM', KEYS[members], id) end
else
  if field ~= '' then redis.call('HSET', KEYS[1], field, ARGV[4])
  elseif ARGV[6] == '' then redis.call('SET', KEYS[1], ARGV[4], 'KEEPTTL')
  elseif ARGV[6] == '-' then redis.call('SET', KEYS[1], ARGV[4])
  else redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[6]) end
  if string.find(flags, 'm', 1, true) then redis.call('SADD', KEYS[members], id) end
end
if string.find(flags, 'i', 1, true) then
  local n = tonumber(ARGV[15])
  for i = 16, 15 + n do stale[#stale + 1] = ARGV[i] end
  for _, v in ipairs(stale) do
    if redis.call('HGET', KEYS[2], v) == id then redis.call('HDEL', KEYS[2], v) end
  end
  for i = 16 + n, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], id) end
end
if ARGV[7] ~= '' then
  local event = ARGV[8]
  if not old and ARGV[9] ~= '' then event = ARGV[9] end
  log_publish(logkey, ARGV[7], event, tonumber(ARGV[13]), ARGV[14])
end
if old then return 1 end
return 2
"""

#: Agent status and its set memberships and name, atomically (merge-safe status JSON).
#: KEYS: status, registered, available, connected, by_user.
#: ARGV: mode, expected (compare-and-set as in the write script: modes a, e, k), json, user_id,
#: registered, available, connected ('1'/'0'), name. Reply as the write script's.
_AGENT_SET = r"""
local old = redis.call('GET', KEYS[1])
local refused = cas(old, ARGV[1], ARGV[2])
if refused then return refused end
redis.call('SET', KEYS[1], ARGV[3])
for i = 2, 4 do
  if ARGV[i + 3] == '1' then redis.call('SADD', KEYS[i], ARGV[4])
  else redis.call('SREM', KEYS[i], ARGV[4]) end
end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[5], ARGV[4], ARGV[8])
else redis.call('HDEL', KEYS[5], ARGV[4]) end
if old then return 1 end
return 2
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

# The websocket routing pieces, shared by the standalone scripts (both sides in one
# atomic script) and the cluster steps (each side a script of its own slot, in the
# order api/ws.py documents). The record side works on the global hash `g`
# (connection_id -> WsConnection JSON); the account side on the account's index `idx`
# (connection_id -> user_id), its agents:connected set and the user's status.
_WS = r"""
-- The record of `conn` decoded, when it names `account` (else nil), and its raw text.
local function ws_record(g, conn, account)
  local cur = redis.call('HGET', g, conn)
  if not cur then return nil, nil end
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and rec['account_id'] == account then return rec, cur end
  return nil, cur
end

-- Store the record of `conn` for (account, user), unless the record held names another
-- account or user or cannot be read: no tenant takes over another's routing entry.
-- 1 stored, 0 refused.
local function ws_claim(g, conn, json, user, account)
  local rec, cur = ws_record(g, conn, account)
  if cur and (not rec or rec['user_id'] ~= user) then return 0 end
  redis.call('HSET', g, conn, json)
  return 1
end

-- The user a record of this account names, else nil (another account's is ignored).
local function ws_record_user(g, conn, account)
  local rec = ws_record(g, conn, account)
  if rec and type(rec['user_id']) == 'string' then return rec['user_id'] end
  return nil
end

-- How the record of `conn` stands for a removal: 'mine' (this account's and user's,
-- and on `node` unless node is ''), 'none' (no record of this account), 'user'
-- (another user's: a stale view), 'node' (moved to another node).
local function ws_match(g, conn, user, account, node)
  local rec = ws_record(g, conn, account)
  if not rec then return 'none' end
  if rec['user_id'] ~= user then return 'user' end
  if node ~= '' and rec['node_id'] ~= node then return 'node' end
  return 'mine'
end

-- Index `conn` as the user's: index entry, agents:connected, status "connected": true.
local function ws_index(idx, connected, status, conn, user)
  redis.call('HSET', idx, conn, user)
  redis.call('SADD', connected, user)
  set_connected(status, true)
end

-- Drop `conn` from the index; the user leaves agents:connected (and its status turns
-- "connected": false) only when no other connection of the user is left in the account.
local function ws_unindex(idx, connected, status, conn, user)
  redis.call('HDEL', idx, conn)
  for _, u in ipairs(redis.call('HVALS', idx)) do
    if u == user then return end
  end
  redis.call('SREM', connected, user)
  set_connected(status, false)
end
"""

#: Register a websocket connection (standalone: both sides atomically). A connection id
#: held by another account or user is refused (answer 0): no tenant can take over
#: another's routing entry.
#: KEYS: ws connections hash, account's connection index, agents:connected, status.
#: ARGV: connection_id, WsConnection JSON, user_id, account_id.
_WS_ADD = r"""
if ws_claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) == 0 then return 0 end
ws_index(KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[3])
return 1
"""

#: Cluster step 1 of an add (the record's slot): claim the connection id.
#: KEYS: ws connections hash. ARGV: as WS_ADD's. Answers 1 stored, 0 refused.
_WS_CLAIM = r"""
return ws_claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""

#: Cluster step 2 of an add (the account's slot), and the restore of a connection that
#: moved while its node's connections were removed: index it. Answers 1.
#: KEYS: account's index, agents:connected, status. ARGV: connection_id, user_id.
_WS_INDEX = r"""
ws_index(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
return 1
"""

#: The user of a connection of this account ('' if none): the index entry, else a
#: connection record that names this account. Read-only.
#: KEYS: ws connections hash, account's index. ARGV: connection_id, account_id.
_WS_OWNER = r"""
local u = redis.call('HGET', KEYS[2], ARGV[1])
if u then return u end
return ws_record_user(KEYS[1], ARGV[1], ARGV[2]) or ''
"""

#: Cluster: the user a connection record of this account names ('' if none; a record
#: of another account answers ''). Read-only.
#: KEYS: ws connections hash. ARGV: connection_id, account_id.
_WS_RECORD_USER = r"""
return ws_record_user(KEYS[1], ARGV[1], ARGV[2]) or ''
"""

#: Remove one connection of this account and user (standalone: both sides atomically);
#: the user leaves agents:connected (and its status "connected" turns false) only when
#: no other connection of the user is left in the account. A record of another account
#: is never touched. Answers 1 removed, 0 nothing to remove (or moved to another node),
#: -1 stale view.
#: KEYS: ws connections hash, account's index, agents:connected, status of the user.
#: ARGV: connection_id, user_id, account_id, node_id ('' = any node).
_WS_REMOVE = r"""
local idx_user = redis.call('HGET', KEYS[2], ARGV[1])
local m = ws_match(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if m == 'user' then return -1 end
if m == 'node' then return 0 end
if m == 'none' then
  if not idx_user then return 0 end
  if idx_user ~= ARGV[2] then return -1 end
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
ws_unindex(KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2])
return 1
"""

#: Cluster step 1 of a removal (the account's slot): unindex the connection, unless the
#: index names another user (-1: a stale view). Answers 1 an entry was removed, 0 none
#: was there (agents:connected and the status are brought in line either way).
#: KEYS: account's index, agents:connected, status. ARGV: connection_id, user_id.
_WS_UNINDEX = r"""
local idx_user = redis.call('HGET', KEYS[1], ARGV[1])
if idx_user and idx_user ~= ARGV[2] then return -1 end
ws_unindex(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
if idx_user then return 1 end
return 0
"""

#: Cluster step 2 of a removal (the record's slot): delete the record if it is this
#: account's and user's (and on the node, unless node_id is ''). Answers 1 deleted,
#: 0 no record of this account, -1 another user's (stale view), 2 moved to another node.
#: KEYS: ws connections hash. ARGV: connection_id, user_id, account_id, node_id.
_WS_UNROUTE = r"""
local m = ws_match(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if m == 'mine' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
if m == 'user' then return -1 end
if m == 'node' then return 2 end
return 0
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


#: Publish a hand-made event (``publish_event``, ``invalidate``...) and append it to
#: its log, atomically. KEYS[1] the log. ARGV: channel, event JSON, retention (ms),
#: approximate cap. Answers PUBLISH's receiver count.
_LOG_PUBLISH = r"""
return log_publish(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4])
"""

#: Read a log for a replay (read-only): {0} when the stream does not exist, else
#: {1, max-deleted-entry-id, last-generated-id, entries, first entry id ('' if empty),
#: entries-added, length}, the entries those of ``XRANGE KEYS[1] ARGV[1] + COUNT ARGV[2]``.
#: (Trimming does not move max-deleted-entry-id, which only XDEL sets: whether a trim
#: reached past an id is read from the first entry and the two counts.)
_LOG_READ = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local deleted, last, first, added, length = '0-0', '0-0', '', 0, 0
for i = 1, #info, 2 do
  local k, v = info[i], info[i + 1]
  if k == 'max-deleted-entry-id' then deleted = v
  elseif k == 'last-generated-id' then last = v
  elseif k == 'entries-added' then added = v
  elseif k == 'length' then length = v
  elseif k == 'first-entry' and type(v) == 'table' then first = v[1] end
end
return {1, deleted, last, redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2]),
        first, added, length}
"""


def _script(name: str, body: str) -> Script:
    return Script(name, _PRELUDE + body)


def _ws_script(name: str, body: str) -> Script:
    return Script(name, _PRELUDE + _WS + body)


WRITE = Script("write", _CAS + _LOG + _WRITE)
LOG_PUBLISH = Script("log_publish", _LOG + _LOG_PUBLISH)
LOG_READ = Script("log_read", _LOG_READ)
AGENT_SET = _script("agent_set", _AGENT_SET)
SESSIONS_PRUNE = _script("sessions_prune", _SESSIONS_PRUNE)
WS_ADD = _ws_script("ws_add", _WS_ADD)
WS_CLAIM = _ws_script("ws_claim", _WS_CLAIM)
WS_INDEX = _ws_script("ws_index", _WS_INDEX)
WS_OWNER = _ws_script("ws_owner", _WS_OWNER)
WS_RECORD_USER = _ws_script("ws_record_user", _WS_RECORD_USER)
WS_REMOVE = _ws_script("ws_remove", _WS_REMOVE)
WS_UNINDEX = _ws_script("ws_unindex", _WS_UNINDEX)
WS_UNROUTE = _ws_script("ws_unroute", _WS_UNROUTE)
WS_LIST = _script("ws_list", _WS_LIST)
