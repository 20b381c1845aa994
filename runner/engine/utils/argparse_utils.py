"""FlexibleArgumentParser at vLLM's path (vllm.utils.argparse_utils).

An argparse.ArgumentParser whose long options may be written with dashes or underscores:
`--max-model-len 256`, `--max_model_len=256` and `--max-model_len` all reach `max_model_len`.
The option name (everything after `--` up to a `=`) is normalized to dashes before argparse
sees it; values are left as they are. Options are declared with dashes, as vLLM's are
(EngineArgs.add_cli_args in runner/engine/engine/arg_utils.py).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


class FlexibleArgumentParser(argparse.ArgumentParser):
    """ArgumentParser that accepts both underscores and dashes in long option names."""

    def __init__(self, *args, **kwargs):
        # vLLM's parsers take no prefix abbreviations: `--max` must not mean `--max-model-len`
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    @staticmethod
    def normalize_args(args: Sequence[str]) -> list[str]:
        out = []
        for arg in args:
            if arg.startswith("--") and len(arg) > 2:
                key, sep, value = arg.partition("=")
                out.append(key.replace("_", "-") + sep + value)
            else:
                out.append(arg)
        return out

    def parse_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                   namespace: Optional[argparse.Namespace] = None):
        if args is None:
            args = sys.argv[1:]
        return super().parse_args(self.normalize_args(args), namespace)

    def parse_known_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                         namespace: Optional[argparse.Namespace] = None):
        if args is None:
            args = sys.argv[1:]
        return super().parse_known_args(self.normalize_args(args), namespace)
