"""Tests of the task layer (runner/tasks): lm-eval task files, scoring, metrics, parity."""
