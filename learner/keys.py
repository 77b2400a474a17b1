"""Every Redis key and Lua script of the learner, in one place.

The LoRA learner's trajectory buffer lives in its own prefix, beside the memory's (``memory_server/keys.py``;
the ``{NS}`` hash tag keeps a namespace on one slot of a Redis Cluster):

    epiq:learn:{NS}:trajectories   stream  one entry per finished episode: field 't' = msgpack trajectory
    epiq:learn:{NS}:dead           stream  malformed entries with the reason
    epiq:learn:{NS}:trained        set     episode ids that a checkpointed learner step trained on (exactly-once)
    epiq:learn:{NS}:commits        stream  one entry per committed step: step, version, episodes (msgpack list)
    epiq:learn:{NS}:meta           hash    committed_step, version (the adapter version last checkpointed),
                                           trained, duplicates, stale (counters)

The trajectory stream is read by the consumer group ``LEARNER_GROUP`` (one consumer, ``learner.buffer.CONSUMER``).
"""

from __future__ import annotations

from common.names import check_namespace  # a run's namespace names both its memory and its learner

LEARNER_GROUP = "learner"  # the consumer group of the trajectory stream


def learner_prefix(ns: str) -> str:
    return f"epiq:learn:{{{check_namespace(ns)}}}:"


def trajectory_stream(ns: str) -> str:
    return learner_prefix(ns) + "trajectories"


def learner_dead_letter_stream(ns: str) -> str:
    return learner_prefix(ns) + "dead"


def trained_set(ns: str) -> str:
    return learner_prefix(ns) + "trained"


def learner_commits_stream(ns: str) -> str:
    return learner_prefix(ns) + "commits"


def learner_meta(ns: str) -> str:
    return learner_prefix(ns) + "meta"


# COMMIT_STEP: after a learner checkpoint, mark what the steps it covers consumed. Idempotent: a step at or
# below meta.committed_step only re-acknowledges its entries (a resumed learner replays its checkpoint's commit).
# Otherwise: SADD each trained episode id (0 = already trained -> counted as a duplicate, never happens unless
# two learners share a stream), XADD one commits entry, set committed_step / version, XACK every entry.
# KEYS[1] trajectory stream, KEYS[2] trained set, KEYS[3] commits stream, KEYS[4] meta hash
# ARGV[1] consumer group, ARGV[2] step, ARGV[3] version, ARGV[4] msgpack list of trained episode ids,
# ARGV[5] msgpack list of stream entry ids to acknowledge, ARGV[6] number of stale (dropped) trajectories
# Returns {newly trained, duplicates, 1 if this call committed the step else 0}.
COMMIT_STEP = """
local step = tonumber(ARGV[2])
local entries = cmsgpack.unpack(ARGV[5])
for i = 1, #entries, 500 do
  redis.call('XACK', KEYS[1], ARGV[1], unpack(entries, i, math.min(i + 499, #entries)))
end
local done = tonumber(redis.call('HGET', KEYS[4], 'committed_step') or '-1')
if step <= done then return {0, 0, 0} end
local episodes = cmsgpack.unpack(ARGV[4])
local new, dup = 0, 0
for _, ep in ipairs(episodes) do
  if redis.call('SADD', KEYS[2], ep) == 1 then new = new + 1 else dup = dup + 1 end
end
redis.call('XADD', KEYS[3], '*', 'step', ARGV[2], 'version', ARGV[3], 'episodes', ARGV[4], 'stale', ARGV[6])
redis.call('HSET', KEYS[4], 'committed_step', ARGV[2], 'version', ARGV[3])
redis.call('HINCRBY', KEYS[4], 'trained', new)
redis.call('HINCRBY', KEYS[4], 'duplicates', dup)
redis.call('HINCRBY', KEYS[4], 'stale', tonumber(ARGV[6]))
return {new, dup, 1}
"""
