"""Evaluation: benchmark tasks, scoring and reports."""
