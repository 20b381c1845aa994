"""Tasks: lm-eval-format task files and the runner's own datasets, behind runner.tasks.api."""
