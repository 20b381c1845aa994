"""The run lifecycle: one run folder, one way through it, for every mode.

    from runner.run import RunContext, run
    result = run(cfg, RunContext(...))       # cfg: runner.schemas.RunConfig

runner/run/lifecycle.py is the way through; folder.py, lock.py, runlog.py, secrets.py and
recipe.py own the run folder's pieces; modes/ holds eval | generate | bench | embed; loop.py is
the request loop that drives any Task (runner.tasks.api) through any Backend (runner.backends).
"""
from runner.run.interrupts import RunInterrupted
from runner.run.lifecycle import EngineSetupError, RunContext, RunResult, run

__all__ = ["run", "RunContext", "RunResult", "RunInterrupted", "EngineSetupError"]
