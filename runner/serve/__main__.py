"""`python -m runner.serve`: the command line, the only place of the server that knows Hydra.

    argv -> `serve.gpus=0,1` quoted (Hydra would read an unquoted comma list as a sweep);
            vLLM's `--lora-modules NAME=PATH ...` -> serve.lora_modules=[...]
         -> hydra.main composes conf/serve.yaml (model/, engine/, sampling/ groups of conf/ +
            the serve node) against runner/serve/config.py
         -> DictConfig -> ServeRunConfig dataclasses -> runner.serve.server.serve(cfg)

Errors in the config end with one line on stderr (`runner.serve: error: ...`) and exit 2;
HYDRA_FULL_ERROR=1 shows the traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

# The config tree the runner finds, installed (runner/conf) or in a checkout (conf/).
from runner.cli import CONF_DIR


def quote_gpus(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") == "serve.gpus" and "," in value \
                and not value.startswith(("'", '"', "[")):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


_ROOT_KEYS = ("model", "engine", "sampling", "serve", "seed", "hydra")


def lora_modules_flag(argv: list[str]) -> list[str]:
    """vLLM's `--lora-modules NAME=PATH [NAME=PATH ...]` -> serve.lora_modules=[...]."""
    out, specs, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--lora-modules" or arg.startswith("--lora-modules="):
            if "=" in arg.split("--lora-modules", 1)[1][:1]:
                specs.append(arg.split("=", 1)[1])
            i += 1
            # NAME=PATH entries follow until an option or a config override (a dotted key,
            # or one of the root config's keys: model=..., engine=..., seed=...)
            while i < len(argv) and not argv[i].startswith(("-", "+", "~")) and "=" in argv[i] \
                    and "." not in argv[i].split("=", 1)[0] \
                    and argv[i].split("=", 1)[0] not in _ROOT_KEYS:
                specs.append(argv[i])
                i += 1
            continue
        out.append(arg)
        i += 1
    if specs:
        out.append("serve.lora_modules=[" + ",".join(f"'{s}'" for s in specs) + "]")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    import hydra
    from hydra.core.config_store import ConfigStore

    from runner.serve.config import register_configs

    argv = quote_gpus(lora_modules_flag(list(sys.argv[1:] if argv is None else argv)))
    register_configs(ConfigStore.instance())
    failed: list = []

    def task(cfg) -> None:
        from omegaconf import OmegaConf

        from runner.serve.server import serve

        try:
            serve(OmegaConf.to_object(cfg))
        except KeyboardInterrupt:
            pass
        except Exception as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"runner.serve: error: {type(exc).__name__}: {exc}", file=sys.stderr,
                  flush=True)
            failed.append(exc)

    saved = sys.argv
    sys.argv = [saved[0] if saved else "runner.serve", *argv]
    try:
        hydra.main(config_path=os.fspath(CONF_DIR), config_name="serve",
                   version_base="1.3")(task)()
    finally:
        sys.argv = saved
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
