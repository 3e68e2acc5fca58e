"""Dagster wiring of asr_pipeline.core: assets, resources and IO managers."""
