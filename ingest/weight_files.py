"""Weight files checked by their headers and sizes, so a truncated or corrupt checkpoint is named before any is written.

    from rtn.ingest.weight_files import check_folder
    check_folder(Path("checkpoints/step1000"))   # RtnError: ... model.safetensors is truncated or corrupt (...)
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from rtn.errors import RtnError


def check_folder(folder: Path) -> None:
    """Raises a one-line RtnError when a save_pretrained folder's weight files are missing, truncated or corrupt.

    Reads headers only (safetensors' JSON header, a torch zip's directory), so every checkpoint
    of a run is checked in moments.
    """
    files = {p for p in (folder / "model.safetensors", folder / "pytorch_model.bin") if p.exists()}
    files |= set(folder.glob("model-*.safetensors"))
    for index in (folder / "model.safetensors.index.json", folder / "pytorch_model.bin.index.json"):
        if index.exists():
            try:
                files |= {folder / shard for shard in json.loads(index.read_text())["weight_map"].values()}
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise RtnError(f"{index} is corrupt (not JSON with a weight_map); download or save it again") from err
    for path in sorted(files):
        if not path.exists():
            raise RtnError(f"{path} is missing (listed in the index of {folder}); download or save it again")
        problem = _safetensors_problem(path) if path.suffix == ".safetensors" else _torch_file_problem(path)
        if problem:
            raise RtnError(f"{path} is truncated or corrupt ({problem}); download or save it again")


def check_shapes(folder: Path, model_config) -> None:
    """Raises a one-line RtnError when a tensor of the folder's safetensors files has another shape than the model its
    config.json describes (the config and the weights do not belong together); check_folder's checks come first."""
    expected = _config_shapes(model_config.to_json_string())
    for path in sorted(folder.glob("*.safetensors")):
        header = json.loads(_header_bytes(path))
        for name, tensor in header.items():
            if name != "__metadata__" and name in expected and tuple(tensor["shape"]) != expected[name]:
                raise RtnError(f"{path}: {name} has shape {tuple(tensor['shape'])} but {folder / 'config.json'} "
                               f"makes it {expected[name]}: the config and the weights do not belong together")


@functools.lru_cache(maxsize=4)
def _config_shapes(config_json: str) -> dict[str, tuple[int, ...]]:
    """Returns name → shape of every parameter of the model a config describes, built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    values = json.loads(config_json)
    model_config = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _header_bytes(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(int.from_bytes(f.read(8), "little"))


def _safetensors_problem(path: Path) -> str | None:
    """Returns what is wrong with a safetensors file's header and size, or None."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n_header = int.from_bytes(head, "little") if len(head) == 8 else 0
        if n_header < 2 or 8 + n_header > size:
            return f"{size} bytes cannot hold its header"
        try:
            header = json.loads(f.read(n_header))
            end = max((int(t["data_offsets"][1]) for name, t in header.items() if name != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "its header is not safetensors JSON"
    if 8 + n_header + end != size:
        return f"its header describes {8 + n_header + end} bytes, the file has {size}"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """Returns what is wrong with a torch.save file (a zip since torch 1.6) as far as its sizes tell, or None."""
    import zipfile
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return "it is empty" if size == 0 else None   # the legacy pickle format has no directory to check sizes against
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.header_offset + member.compress_size > size:
                    return f"{member.filename} runs past the end of the file"
    except (zipfile.BadZipFile, OSError) as err:
        return str(err)
    return None
