"""Shared by every area: the database and settings resources, the IO manager, the ingest assets' code versions."""
