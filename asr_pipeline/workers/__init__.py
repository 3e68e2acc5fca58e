"""Programs the Dagster layer launches as subprocesses (through Dagster Pipes); they import dagster_pipes only."""
