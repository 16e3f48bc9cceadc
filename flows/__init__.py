"""Prefect flows chaining the pipeline stages."""
