"""Replicas that act as one gateway: what they share through Redis (the `cluster` config section).

link.py holds the connection and whether Redis answers; quota.py takes a tenant's shared quota
in leases; registry.py is each replica's heartbeat and the fleet view. Without `cluster` none of
this runs and every process keeps its own quotas.
"""

from gateway.cluster.link import ClusterLink, replica_id

__all__ = ["ClusterLink", "replica_id"]
