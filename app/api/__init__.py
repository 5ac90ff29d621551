"""HTTP layer: routers per resource, dependencies, and the one error envelope."""
