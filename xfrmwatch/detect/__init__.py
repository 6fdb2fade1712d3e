"""Detection: rekey tracking (stage 2 of the pipeline, with the mirror), process names and the Sigma rules (stage 3)."""
