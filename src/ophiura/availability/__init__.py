"""Availability analysis: the seeds' formulas, a simulation that checks them, and measured
availability from the cluster's event log (docs/availability.md).

    from ophiura.availability import starfish_availability, cluster_availability, class_of_nines
    from ophiura.availability.measured import from_logs
"""

from ophiura.availability.cluster_model import ClusterResult, cluster_availability
from ophiura.availability.nines import (
    Availability,
    allowed_downtime,
    availability_for_class,
    availability_from_downtime,
    availability_from_failures,
    class_of_nines,
    downtime_per_year,
    percent,
)
from ophiura.availability.starfish import (
    ModelError,
    StarfishResult,
    eq1,
    eq2,
    rho_from_availability,
    starfish_availability,
    table,
)
from ophiura.availability.units import parse_duration, parse_probability

__all__ = [
    "Availability",
    "ClusterResult",
    "ModelError",
    "StarfishResult",
    "allowed_downtime",
    "availability_for_class",
    "availability_from_downtime",
    "availability_from_failures",
    "class_of_nines",
    "cluster_availability",
    "downtime_per_year",
    "eq1",
    "eq2",
    "parse_duration",
    "parse_probability",
    "percent",
    "rho_from_availability",
    "starfish_availability",
    "table",
]
