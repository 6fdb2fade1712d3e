"""Stage 4 of the pipeline: detection (rekey tracking, Sigma rules)."""
