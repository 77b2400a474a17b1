"""The sharded MemRL memory: records, Redis store, shards, retrieval router and streamed utility updates."""
