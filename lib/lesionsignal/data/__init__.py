"""Layer 2: the cohorts as files on disk: registry data, one reader per cohort kind, the manifest, validation."""
