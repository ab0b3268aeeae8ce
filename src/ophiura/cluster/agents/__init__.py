"""Resource agents: how the cluster starts, stops and monitors anything (see base.py)."""
