"""What the service stores for tenants besides jobs: uploaded datasets, task rows (to and from
task files) and API keys."""
