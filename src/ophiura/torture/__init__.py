"""`ophiura torture`: a Jepsen-style randomized test of the replicated volume.

Real processes on 127.0.0.1 (three `ophiura se`, one active and two standby `ophiura he`), clients
over NBD whose every 512-byte sector carries the identity of the write that produced it, a seeded
nemesis that kills, pauses, slows and power-cuts them (several faults at once), and a pure checker
that reads the history and says what was lost, stale, corrupt or diverged.

Modules: `schedule` (the seeded fault table and schedule), `stamp` (sector identity), `processes`
(spawning and signalling the real processes), `nemesis` (faults), `clients` (workload and
history), `checker` (history in, verdict out), `runner` (one run end to end).
"""
