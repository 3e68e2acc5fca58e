class ConfigError(ValueError):
    """A setting (environment variable or Dagster config) has a value we cannot use; the message says which."""


class DatabaseUnavailable(RuntimeError):
    """The transcript database could not be reached after retries; the message has the URL with *** for the password."""


class PlannerBusy(RuntimeError):
    """Another planner (the sensor or `asr-pipeline ingest`) held the planning lock for longer than we waited."""
