"""Rows to features: the ingest assets and their checks, the batch partitions, their planning and states, and
new_transcripts_sensor."""
