"""Stage 3 of the pipeline: process names and the Sigma rules."""
