"""The shipped Sigma rule pack (installed as xfrmwatch.rules)."""
