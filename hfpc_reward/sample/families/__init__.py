"""Independently written pair generators ("families") for validating the consistency judge on data it
was not tuned on; see base.py for the pair record and benchmarks/consistency_validation.py for the report."""
