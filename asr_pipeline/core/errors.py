class ConfigError(ValueError):
    """A setting (environment variable or Dagster config) has a value we cannot use; the message says which."""
