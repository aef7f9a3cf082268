"""Offline lm-eval tasks for the embedded Genjo models (see EVAL.md and tiny_tasks.py)."""
