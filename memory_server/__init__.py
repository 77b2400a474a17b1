"""The sharded MemRL memory: its config section, records, Redis store, shards, retrieval router and streamed utility
updates."""
