"""The test and benchmark harness: start Corral (corral), a PostgreSQL server (postgres),
cluster nodes (cluster), and a fake model registry (registry)."""
