#!/usr/bin/env bash
# Stage the wheels scripts/device_ray.sh installs on the GPU machine, which has no ray,
# hydra-core, omegaconf or jsonschema (its Python is 3.12): into .whl/ at the repository root,
# an ignored folder that a device run carries (`carry: [".whl"]`).
#
#   bash scripts/stage_ray_wheels.sh          # here, once; then run scripts/device_ray.sh there
#
# The ray wheel is slimmed (about 79 MB -> 40 MB): the Java jar, the dashboard's web client and
# the libraries the runner does not import (rllib, serve, data, train, tune, llm, air) are
# dropped and its RECORD rewritten to match, so pip installs it as usual. Everything else the
# runner needs there (torch, transformers, pyyaml, msgpack, protobuf, click, requests, attrs, ...)
# is on that machine already (its package list in the device notes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
W=.whl
mkdir -p "$W"
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
rm -f "$W"/*.whl
platform=(--only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64)
$PY -m pip download -q --no-deps "${platform[@]}" -d "$W" \
  ray==2.60.0 hydra-core==1.3.8 omegaconf==2.3.0 jsonschema==4.26.0 \
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0
# antlr4-python3-runtime 4.9.3 (hydra-core and omegaconf pin 4.9.*) is published as a source
# archive only: build its pure-Python wheel here
$PY -m pip wheel -q --no-deps -w "$W" antlr4-python3-runtime==4.9.3
$PY - "$W" <<'PY'
import base64, glob, hashlib, os, sys, zipfile

DROP = ("ray/jars/", "ray/dashboard/client/", "ray/rllib/", "ray/serve/", "ray/data/",
        "ray/train/", "ray/tune/", "ray/llm/", "ray/air/")
src = glob.glob(os.path.join(sys.argv[1], "ray-*.whl"))[0]
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    record = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    kept = []
    for info in zin.infolist():
        if info.filename == record or info.filename.startswith(DROP):
            continue
        data = zin.read(info)
        zout.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        kept.append(f"{info.filename},sha256={digest},{len(data)}")
    kept.append(f"{record},,")
    zout.writestr(record, "\n".join(kept) + "\n")
os.replace(tmp, src)
PY
ls -la "$W"
du -ch "$W"/*.whl | tail -1
