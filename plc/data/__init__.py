"""Data files of the PLC contract: the built-in demo site description."""
