"""OCF resource agents for Pacemaker: `ocf:ophiura:target` and `ocf:ophiura:replicated-volume`.

Pacemaker runs an agent as `AGENT ACTION` with its parameters in OCF_RESKEY_* and reads the exit
code (OCF 1.1). The agents' logic lives here, in Python, and reuses the cluster's built-in
agents (`ophiura.cluster.agents`) so ophiura's own cluster and Pacemaker start and check an HE the
same way. The executables Pacemaker finds in `/usr/lib/ocf/resource.d/ophiura/` are small shell
wrappers written by `ophiura ocf install` (see `install.py`, docs/agents.md).
"""
