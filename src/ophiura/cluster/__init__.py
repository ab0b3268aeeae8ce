"""The HA cluster harness: heartbeats, membership, hierarchies, agents, recovery, fencing."""
