"""Verification of precipitation forecasts: accumulating scores, reference forecasts, the paired
block bootstrap and the upstream-versus-baseline comparison report."""
