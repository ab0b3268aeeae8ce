"""Test support shared by tests/, bench/ and `ophiura demo`: one copy of each helper.

- `ports`: free TCP/UDP ports on 127.0.0.1, picked by the kernel.
- `waiting`: poll a condition until it holds or a deadline passes (no fixed sleeps).
- `procs`: start a process (optionally inside a network namespace), wait for its port,
  stop it by PID only (SIGTERM, then SIGKILL).
- `netns`: the namespace lab: hosts in network namespaces on 198.51.100.0/24, their bridges in
  a namespace of their own, nothing added to the root namespace (root only).

It lives in the package (not in tests/) because the demo and the benchmarks use it too; it has
no dependency beyond the standard library and is never imported by the product's code paths.
"""
