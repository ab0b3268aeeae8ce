"""StarFish replicated volumes.

`wire` is what both sides speak (frames, messages, the client, link emulation, secrets);
`he` is the host element and `se` the storage element. `he` and `se` import only `wire`,
never each other (tests/replication/test_layout.py checks it).
"""
