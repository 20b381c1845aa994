"""`dataset=hf:...` sources: the rows of a Hugging Face dataset, local or from the hub.

    hf:PATH                    a folder written by Dataset(Dict).save_to_disk -> load_from_disk
    hf:FILE.jsonl|json|csv|parquet   one local file -> datasets' packaged builder with
                               data_files=FILE (its only split is "train" unless one is given)
    hf:FOLDER                  a folder of data files -> load_dataset(FOLDER)
    hf:NAME[:CONFIG[:SPLIT]]   a hub dataset (or the local HF cache) -> load_dataset

A packaged builder's bare name (hf:parquet, hf:json, ...) is refused: without data files it
would scan the working directory. Offline is decided up front: with HF_HUB_OFFLINE or
HF_DATASETS_OFFLINE set only the local cache is read; without them a hub that cannot be reached
(a 3 s probe of HF_ENDPOINT) is one line saying "offline" at once, instead of datasets' retries
(about 24 s of warnings). Every failure is one line naming the source and the fix.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

from runner.datasets import DatasetError, RawSource

DEFAULT_SPLIT = "validation"
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# datasets' packaged builders: names that are formats, not datasets
PACKAGED = ("json", "csv", "parquet", "text", "arrow", "pandas", "sql", "webdataset",
            "imagefolder", "audiofolder", "videofolder", "xml", "hdf5", "cache")
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT_S = 3.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def offline_flags() -> list[str]:
    return [f"{k}={os.environ[k]}" for k in OFFLINE_FLAGS
            if os.environ.get(k, "").strip().lower() not in ("", "0", "false", "no", "off")]


def hub_unreachable() -> Optional[str]:
    """Why the hub cannot be reached (None: it can, or a proxy decides and we cannot tell)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
    return None


def _is_saved_to_disk(path: Path) -> bool:
    # save_to_disk writes state.json (one Dataset) or dataset_dict.json (a DatasetDict).
    return path.is_dir() and ((path / "dataset_dict.json").is_file()
                              or (path / "state.json").is_file())


def _one_split(loaded, name: str, split: str):
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetError(f"split {split!r} not in the saved dataset {name!r}; its splits: "
                               f"{', '.join(loaded)}")
        return loaded[split]
    return loaded  # a single saved Dataset is one split already


def _load(name: str, config: Optional[str], split: str, where: str, **kw):
    import datasets

    flags = offline_flags()
    local = Path(name).exists() or "data_files" in kw
    if not local and not flags:
        why = hub_unreachable()
        if why is not None:
            raise DatasetError(
                f"could not load {where}: the hub cannot be reached, this machine looks offline "
                f"({why}); set HF_HUB_OFFLINE=1 to read it from the local HF cache, or use a "
                "local file (hf:path/to/data.jsonl, jsonl:PATH)")
    if Path(name).is_dir():
        from runner.tasks.data import local_cache_dir

        kw["cache_dir"] = local_cache_dir(Path(name))
    try:
        return datasets.load_dataset(name, config, split=split, **kw)
    except Exception as e:
        if local:
            if Path(name).is_dir():
                check_folder(Path(name))  # a data file's own fault, with its line
            cause = e.__cause__ or e  # datasets wraps the reader's error
            fix = "its README.md `configs:` header and its data files" if Path(name).is_dir() \
                else "that the file is valid JSON lines, JSON, CSV or Parquet"
            raise DatasetError(f"could not read {where}: {_first_line(cause)[:300]}; check "
                               f"{fix}") from None
        mode = (f"offline mode is on ({', '.join(flags)}), so only the local cache was read"
                if flags else "the hub was tried over the network")
        raise DatasetError(
            f"could not load {where}: {_first_line(e)}. It is not in the local cache or could "
            f"not be prepared; {mode}. Use a local file (hf:path/to/data.jsonl), a folder "
            "written by save_to_disk (hf:PATH) or a jsonl: source to run without the hub") from e


def check_folder(folder: Path) -> None:
    """DatasetError naming the file and line of the first JSON/CSV data file in `folder` that
    datasets could not read (nothing when they all pass; parquet is left to datasets)."""
    from runner.tasks.data import check_data_file

    for path in sorted(folder.rglob("*")):
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder in ("json", "csv") and path.is_file() and \
                not any(part.startswith(".") for part in path.relative_to(folder).parts):
            check_data_file(str(path), builder, error=DatasetError)


def _rows(ds, name: str, source: Optional[Path]) -> Callable[[list[int]], list[dict]]:
    def get_rows(idx: list[int]) -> list[dict]:
        try:
            return ds.select(idx).to_list()
        except Exception as e:  # e.g. bytes that are not UTF-8 in a string column
            if source is not None and source.is_dir():
                check_folder(source)
            raise DatasetError(f"could not read the rows of {name!r}: "
                               f"{_first_line(e)[:300]}") from None
    return get_rows


def read_hf(name: str, config: Optional[str], split: Optional[str]) -> RawSource:
    import datasets  # heavy import, only when an hf source is used

    path = Path(name).expanduser()
    if _is_saved_to_disk(path):
        split_name = split or DEFAULT_SPLIT
        where = f"hf dataset {name!r} (split {split_name!r})"
        if config is not None:
            raise DatasetError(f"{name!r} is a folder written by save_to_disk, which has no "
                               f"configs; drop the config {config!r} (hf:PATH::SPLIT selects a "
                               "split)")
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DatasetError(f"could not read the saved {where}: {_first_line(e)}") from None
        ds = _one_split(loaded, name, split_name)
    elif path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DatasetError(f"hf:{name}: a local file must end in "
                               f"{', '.join(FILE_BUILDERS)}; got {path.suffix or 'no suffix'}")
        if config is not None:
            raise DatasetError(f"hf:{name}: a single file has no configs; drop {config!r} "
                               "(hf:FILE::SPLIT selects a split)")
        split_name = split or "train"
        where = f"the file {str(path)!r} (split {split_name!r})"
        from runner.tasks.data import check_data_file

        check_data_file(str(path), builder, error=DatasetError)  # names the line at fault
        ds = _load(builder, None, split_name, where, data_files=str(path.resolve()))
    else:
        if not path.exists() and (path.suffix.lower() in FILE_BUILDERS or path.is_absolute()
                                  or name.startswith((".", "~"))):
            raise DatasetError(f"hf:{name}: no such file or folder ({path.absolute()}); check "
                               "the path (a hub dataset id is OWNER/NAME)")
        if name.lower() in PACKAGED:
            raise DatasetError(f"hf:{name} names a file format, not a dataset (it would read "
                               f"every matching file in the working directory); give the file: "
                               f"dataset=hf:path/to/data.{name if name != 'text' else 'txt'}")
        split_name = split or DEFAULT_SPLIT
        where = f"hf dataset {name!r} (config {config!r}, split {split_name!r})"
        ds = _load(str(path) if path.is_dir() else name, config, split_name, where)
    if not isinstance(ds, datasets.Dataset):
        raise DatasetError(f"{where} did not load as one split (got {type(ds).__name__})")
    if len(ds) == 0:
        raise DatasetError(f"{where} has no rows")
    return RawSource(num_rows=len(ds), columns=list(ds.column_names),
                     get_rows=_rows(ds, name, path if path.exists() else None),
                     label=lambda i: f"{name} row {i}")
