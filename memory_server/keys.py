"""Every Redis key and Lua script of the memory, in one place.

Layout of one namespace NS (the ``{NS}`` hash tag keeps a namespace on one slot of a Redis Cluster):

    epiq:mem:{NS}:meta          hash   shards, dim, version (bumped by every add / update / eviction / restore)
    epiq:mem:{NS}:ids           zset   memory id -> created_at: the namespace index
    epiq:mem:{NS}:shard:K       set    memory ids owned by shard K (shard_of(id, shards) == K)
    epiq:mem:{NS}:rec:ID        hash   blob (msgpack record as written), q, visits, last_reward ('' = none),
                                       created_at, updated_at, kind, shard
    epiq:mem:{NS}:applied:ID    set    episode ids whose reward was applied to memory ID (exactly-once)
    epiq:mem:{NS}:rewards:K     stream reward events for shard K
    epiq:mem:{NS}:dead          stream malformed events with the reason
    epiq:mem:{NS}:audit         stream every add / update / evict / restore with its provenance
    epiq:mem:{NS}:qstats        hash   q_sum (over live memories), added, updates, duplicates, missing, evicted

Floats are stored as decimal strings that read back to the same double (Python ``repr``, Lua ``%.17g``).
The scripts build record / applied / shard keys from the namespace prefix passed in ARGV[1]: correct on
one server (and on one cluster slot thanks to the hash tag), not declared in KEYS.
"""

from __future__ import annotations

import zlib

from common.names import check_namespace  # also the name callers validate namespaces with (memory_server.keys)


def prefix(ns: str) -> str:
    return f"epiq:mem:{{{check_namespace(ns)}}}:"


def meta_key(ns: str) -> str:
    return prefix(ns) + "meta"


def namespace_index_key(ns: str) -> str:
    return prefix(ns) + "ids"


def shard_ids_key(ns: str, shard: int) -> str:
    return f"{prefix(ns)}shard:{shard}"


def record_key(ns: str, memory_id: str) -> str:
    return f"{prefix(ns)}rec:{memory_id}"


def applied_key(ns: str, memory_id: str) -> str:
    return f"{prefix(ns)}applied:{memory_id}"


def reward_stream(ns: str, shard: int) -> str:
    return f"{prefix(ns)}rewards:{shard}"


def dead_letter_stream(ns: str) -> str:
    return prefix(ns) + "dead"


def audit_stream(ns: str) -> str:
    return prefix(ns) + "audit"


def q_stats_key(ns: str) -> str:
    return prefix(ns) + "qstats"


def episode_retrieval_key(ns: str, episode_id: str) -> str:
    """The retrieval an episode used (msgpack), pinned so that a re-dispatched episode injects the same memories."""
    return f"{prefix(ns)}episode:{episode_id}"


EPISODE_PIN_TTL_S = 7 * 24 * 3600  # pinned retrievals expire after a week (retries happen within minutes)


def shard_of(memory_id: str, shards: int) -> int:
    """The shard that owns ``memory_id``: crc32 of its UTF-8 bytes mod ``shards`` (stable across processes)."""
    return zlib.crc32(memory_id.encode()) % shards


# Record hash fields, in the order the store reads them.
RECORD_FIELDS = ("blob", "q", "visits", "last_reward", "updated_at")

_LUA_COMMON = """
local prefix = ARGV[1]
local function num(x) return string.format('%.17g', x) end
local function finite(x) local v = tonumber(x); return v ~= nil and v == v and v > -math.huge and v < math.huge end
local function count(x) local v = tonumber(x); return v ~= nil and v >= 0 and v == math.floor(v) and v < math.huge end
"""

# GET_MANY: read-only; some fields of many records in one call (a pipeline of HMGETs spends most of its
# time packing commands in Python: this is ~1.5x faster).
# ARGV[1] namespace prefix, ARGV[2] number of fields F, ARGV[3..2+F] field names, ARGV[3+F..] memory ids
# Returns one array of the F values per id (nil values where the record is gone).
GET_MANY = """
local prefix, nf = ARGV[1], tonumber(ARGV[2])
local fields, out = {}, {}
for j = 1, nf do fields[j] = ARGV[2 + j] end
for i = 3 + nf, #ARGV do
  out[#out + 1] = redis.call('HMGET', prefix .. 'rec:' .. ARGV[i], unpack(fields))
end
return out
"""

# ADD: write new records; an id that already exists is left untouched (a retried write cannot reset Q).
# KEYS[1] meta, KEYS[2] namespace index, KEYS[3] audit stream, KEYS[4] qstats
# ARGV[1] namespace prefix, ARGV[2] audit MAXLEN (approximate),
# ARGV[3] msgpack list of [id, shard, blob, q, visits, last_reward, created_at, updated_at, kind,
#         episode_id, task_id, env, model_id, adapter_version, writer, retrieved_ids (comma-joined)]
#         (all strings; packed without the bin type, which Lua's cmsgpack cannot read)
# Every record's numbers are checked before the first write: a bad one is an error reply and nothing is written.
# Returns the ids actually written.
ADD = _LUA_COMMON + """
local batch = cmsgpack.unpack(ARGV[3])
for _, r in ipairs(batch) do
  for _, f in ipairs({{4, 'q'}, {7, 'created_at'}, {8, 'updated_at'}}) do
    if not finite(r[f[1]]) then return redis.error_reply('ADD: record ' .. tostring(r[1]) .. ': ' .. f[2] .. ' is not a finite number') end
  end
  if not count(r[5]) then return redis.error_reply('ADD: record ' .. tostring(r[1]) .. ': visits is not a count') end
  if r[6] ~= '' and not finite(r[6]) then return redis.error_reply('ADD: record ' .. tostring(r[1]) .. ': last_reward is not a finite number') end
end
local added, q_sum = {}, 0
for _, r in ipairs(batch) do
  local id = r[1]
  local key = prefix .. 'rec:' .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'blob', r[3], 'q', r[4], 'visits', r[5], 'last_reward', r[6],
               'created_at', r[7], 'updated_at', r[8], 'kind', r[9], 'shard', r[2])
    redis.call('ZADD', KEYS[2], r[7], id)
    redis.call('SADD', prefix .. 'shard:' .. r[2], id)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'op', 'add', 'id', id, 'kind', r[9], 'q', r[4],
               'episode', r[10], 'task', r[11], 'env', r[12], 'model', r[13], 'adapter', r[14],
               'writer', r[15], 'retrieved', r[16])
    added[#added + 1] = id
    q_sum = q_sum + tonumber(r[4])
  end
end
if #added > 0 then
  redis.call('HINCRBY', KEYS[1], 'version', #added)
  redis.call('HINCRBY', KEYS[4], 'added', #added)
  redis.call('HINCRBYFLOAT', KEYS[4], 'q_sum', num(q_sum))
end
return added
"""

# APPLY_REWARDS: a batch of reward events, in order. Per event: if the memory is gone -> missing (-1); if its
# stored Q / visits or the reward are not numbers -> corrupt (-2, nothing written, the episode is not marked);
# else SADD the episode to its applied set; already there -> duplicate (0, no effect); new -> applied (1):
# Q <- Q + alpha (r - Q), visits + 1, last_reward, updated_at (the mark and the update are written together,
# after every check, so a redelivered event can never count as a duplicate of an update that did not happen). One audit entry per call lists every
# applied event (msgpack [[memory_id, episode_id, reward, q, visits], ...]): a per-event XADD costs
# about as much as the update itself.
# KEYS[1] meta, KEYS[2] audit stream, KEYS[3] qstats
# ARGV[1] namespace prefix, ARGV[2] alpha, ARGV[3] now (unix seconds), ARGV[4] audit MAXLEN,
# ARGV[5] msgpack list of [memory_id, episode_id, reward (float)]
# Returns msgpack [statuses, qs]: the status per event and the memory's Q after it (0 when missing or corrupt).
APPLY_REWARDS = _LUA_COMMON + """
local alpha, now = tonumber(ARGV[2]), ARGV[3]
local batch = cmsgpack.unpack(ARGV[5])
local statuses, qs, audit = {}, {}, {}
local n_dup, n_missing, n_corrupt, q_delta = 0, 0, 0, 0
for i, ev in ipairs(batch) do
  local mid, ep, r = ev[1], ev[2], ev[3]
  local key = prefix .. 'rec:' .. mid
  local f = redis.call('HMGET', key, 'q', 'visits')
  if not f[1] then
    statuses[i], qs[i] = -1, 0
    n_missing = n_missing + 1
  elseif not (finite(f[1]) and count(f[2]) and finite(r)) then
    statuses[i], qs[i] = -2, 0
    n_corrupt = n_corrupt + 1
  elseif redis.call('SADD', prefix .. 'applied:' .. mid, ep) == 0 then
    statuses[i], qs[i] = 0, tonumber(f[1])
    n_dup = n_dup + 1
  else
    local old, visits = tonumber(f[1]), tonumber(f[2]) + 1
    local new = old + alpha * (r - old)
    redis.call('HSET', key, 'q', num(new), 'visits', visits, 'last_reward', num(r), 'updated_at', now)
    statuses[i], qs[i] = 1, new
    audit[#audit + 1] = {mid, ep, r, new, visits}
    q_delta = q_delta + (new - old)
  end
end
if #audit > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'op', 'update', 'n', #audit, 'alpha', ARGV[2],
             'events', cmsgpack.pack(audit))
  redis.call('HINCRBY', KEYS[1], 'version', #audit)
  redis.call('HINCRBY', KEYS[3], 'updates', #audit)
  redis.call('HINCRBYFLOAT', KEYS[3], 'q_sum', num(q_delta))
end
if n_dup > 0 then redis.call('HINCRBY', KEYS[3], 'duplicates', n_dup) end
if n_missing > 0 then redis.call('HINCRBY', KEYS[3], 'missing', n_missing) end
if n_corrupt > 0 then redis.call('HINCRBY', KEYS[3], 'corrupt', n_corrupt) end
return cmsgpack.pack({statuses, qs})
"""

# EVICT: when the namespace holds more than `capacity` memories, delete the lowest-value candidates
# until it holds `capacity`. value = Q - age_weight * age_days (age from the index's created_at);
# ties: older first, then id. The caller picks the candidates with a chunked client-side scan (a
# server-side scan blocks the server ~0.7 s per 100k memories); this script re-values them at deletion
# time, so an update that landed in between still counts. An id whose record is gone is -inf (cleaned up).
# KEYS[1] meta, KEYS[2] namespace index, KEYS[3] audit stream, KEYS[4] qstats
# ARGV[1] namespace prefix, ARGV[2] capacity, ARGV[3] age_weight (Q per day), ARGV[4] now,
# ARGV[5] audit MAXLEN, ARGV[6] msgpack list of candidate ids
# Returns the evicted ids, lowest value first.
EVICT = _LUA_COMMON + """
local capacity, w, now = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local excess = redis.call('ZCARD', KEYS[2]) - capacity
if excess <= 0 then return {} end
local items = {}
for _, id in ipairs(cmsgpack.unpack(ARGV[6])) do
  local created = redis.call('ZSCORE', KEYS[2], id)
  if created then
    local f = redis.call('HMGET', prefix .. 'rec:' .. id, 'q', 'visits', 'shard')
    local value = -math.huge
    if f[1] then value = tonumber(f[1]) - w * (now - tonumber(created)) / 86400 end
    items[#items + 1] = {id, value, tonumber(created), f[1], f[2], f[3]}
  end
end
table.sort(items, function(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  if a[3] ~= b[3] then return a[3] < b[3] end
  return a[1] < b[1]
end)
local evicted, q_sum = {}, 0
for i = 1, math.min(excess, #items) do
  local id, value, q, visits, shard = items[i][1], items[i][2], items[i][4], items[i][5], items[i][6]
  if shard then redis.call('SREM', prefix .. 'shard:' .. shard, id) end
  redis.call('DEL', prefix .. 'rec:' .. id, prefix .. 'applied:' .. id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'op', 'evict', 'id', id, 'q', q or '',
             'visits', visits or '', 'value', num(value))
  if q then q_sum = q_sum + tonumber(q) end
  evicted[#evicted + 1] = id
end
if #evicted > 0 then
  redis.call('HINCRBY', KEYS[1], 'version', #evicted)
  redis.call('HINCRBY', KEYS[4], 'evicted', #evicted)
  redis.call('HINCRBYFLOAT', KEYS[4], 'q_sum', num(-q_sum))
end
return evicted
"""


# RESTORE_SWAP: replace the live namespace by the copy staged under ARGV[2], in one atomic call (a restore that
# fails before it leaves the live namespace as it was). All keys carry the namespace's hash tag.
# ARGV[1] live prefix, ARGV[2] staging prefix, ARGV[3] msgpack list of live key suffixes to delete,
# ARGV[4] msgpack list of staged key suffixes to move to the live prefix
# Returns the number of keys moved.
RESTORE_SWAP = """
local live, staged = ARGV[1], ARGV[2]
for _, k in ipairs(cmsgpack.unpack(ARGV[3])) do redis.call('UNLINK', live .. k) end
local moved = 0
for _, k in ipairs(cmsgpack.unpack(ARGV[4])) do
  redis.call('RENAME', staged .. k, live .. k)
  moved = moved + 1
end
return moved
"""
