"""run.log: every log record of a run, from its first line, with secrets masked.

    RunLog(secrets)          from the start of the run: records are held in memory (the run
                             folder does not exist yet while the config, the data and the
                             model are checked and loaded)
    .attach(path)            once the folder exists: the held records, then every new one, go
                             to run.log (appended, O_NOFOLLOW: a symlinked run.log is refused)
    .traceback(exc, header)  the whole story of a failure, which the console gets in one line
    .close()                 detaches from the root logger

The console keeps Hydra's job logging (conf/hydra/job_logging/runner.yaml); run.log is the
runner's own.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import time
import traceback
from pathlib import Path
from typing import Optional

from runner.run.secrets import SecretMask

_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] %(message)s"


class RunLog:
    def __init__(self, secrets: list[str]):
        self.mask = SecretMask(secrets)
        self.root = logging.getLogger()
        self.saved_level = self.root.level
        if self.root.level > logging.INFO or self.root.level == logging.NOTSET:
            self.root.setLevel(logging.INFO)
        # capacity is records, not bytes: a run logs a few dozen lines before its folder exists
        self.buffer = logging.handlers.MemoryHandler(capacity=10_000,
                                                     flushLevel=logging.CRITICAL + 1)
        self.buffer.addFilter(self.mask)
        self.root.addHandler(self.buffer)
        self.file: Optional[logging.StreamHandler] = None

    def attach(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        stream = os.fdopen(fd, "a", encoding="utf-8")
        self.file = logging.StreamHandler(stream)
        self.file.setFormatter(logging.Formatter(_FORMAT))
        self.file.addFilter(self.mask)
        self.buffer.setTarget(self.file)
        self.buffer.flush()
        self.root.removeHandler(self.buffer)
        self.buffer.close()
        self.root.addHandler(self.file)

    def traceback(self, exc: BaseException, header: str) -> None:
        if self.file is None:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = f"[{stamp}][runner][ERROR] {header}\n" + "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.file.stream.write(self.mask.mask(text))
        self.file.flush()

    def close(self) -> None:
        for handler in (self.buffer, self.file):
            if handler is not None:
                self.root.removeHandler(handler)
                handler.close()
        self.root.setLevel(self.saved_level)
