"""Ingest batches as dynamic partitions; keys carry their id range (see asr_pipeline.core.batches)."""

import dagster as dg

INGEST_BATCHES = dg.DynamicPartitionsDefinition(name="ingest_batches")
