"""Operating an instance: HTTP endpoint, metrics, status, dashboard (and later more)."""
