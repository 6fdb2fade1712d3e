"""xfrmwatch: a structured, key-free, alerting view of the Linux XFRM (IPsec) framework."""

__version__ = "0.1.0"
