"""StarFish replicated volumes: wire protocol, storage element, host element, recovery."""
