"""The cyclic garbage collector while an engine is busy: one owner, the LLMEngine.

    StepCollector()
      before_step()   the first step of a busy period decides: when collection is on and nothing
                      is frozen yet, this engine takes charge and freezes (gc.freeze) what lives
                      before each step; otherwise (collection off, objects frozen by the
                      process or by another engine) it changes nothing for the whole period
      idle()          the engine has no request left (after its last step, an abort that
                      emptied it, shutdown): what it froze is unfrozen (gc.unfreeze)

Why: a busy engine makes many small objects per step (outputs, logprob dicts) and keeps the
finished ones for its caller, and every full collection would scan all of them again, and
everything else the process holds (a Ray worker imports many modules): most of the host time
of a multiple-choice run with prompt logprobs, and twice the output-processing time of a
throughput run inside a Ray actor (both measured). Reference counting frees everything as
before; only reference cycles that become garbage while the engine is busy wait for idle().
"""
from __future__ import annotations

import gc


class StepCollector:
    def __init__(self) -> None:
        self.busy = False       # inside a busy period
        self.owner = False      # this engine froze objects in it

    def before_step(self) -> None:
        if not self.busy:
            self.busy = True
            self.owner = gc.isenabled() and gc.get_freeze_count() == 0
        if self.owner:
            gc.freeze()

    def idle(self) -> None:
        if self.owner:
            gc.unfreeze()
        self.busy = self.owner = False
