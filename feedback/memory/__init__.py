"""Correction memory: approved answers retrieved at chat time (verified, grounded or none), and the
calibration of its thresholds."""
