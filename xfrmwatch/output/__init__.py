"""Stage 4 of the pipeline: outputs of `xfrmwatch run` and the renderers of every format."""
