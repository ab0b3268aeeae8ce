"""The REST API and dashboard of a cluster node (aiohttp), served by `ophiura node` when
`cluster.http` or `nodes[].http` is set. See docs/web.md.

Nothing here holds cluster logic: every action goes through `NodeDaemon.handle`, the function
the line-JSON admin API calls, so the CLI, the REST API and the dashboard cannot disagree.
"""
