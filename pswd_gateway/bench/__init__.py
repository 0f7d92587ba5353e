"""Benchmarks behind docs/benchmarks.md (``pswd-gateway bench …``). They print figures and never
judge them: timing on shared machines is measured, not asserted."""
