"""The host element: a volume replicated over SEs (write queue, cache, quorum, recovery)."""
