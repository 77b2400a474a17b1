"""Small pieces every component shares and none owns: config field vocabulary, cache locations, a phase timer,
the msgpack wire envelope and the Redis stream consumer. Imports nothing from the components or the driver."""
