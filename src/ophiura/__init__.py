"""ophiura: high availability for services and their data."""

__version__ = "0.1.0"
