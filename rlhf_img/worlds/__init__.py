"""Procedural worlds: small, exactly-scorable text-to-image tasks for running the whole pipeline on a CPU."""
