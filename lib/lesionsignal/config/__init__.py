"""Layer 8: a run's configuration: YAML parameter files parsed into validated, frozen dataclasses."""
