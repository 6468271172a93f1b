"""GGUF model files (llama.cpp's format): find one, read what it says about itself.

transformers loads a GGUF with `from_pretrained(folder, gguf_file=name)` and dequantizes its
weights to float; rtn records which quantization they came from, because the spectra of
dequantized weights carry its rounding.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from rtn.errors import RtnError

SUFFIX = ".gguf"


@dataclass(frozen=True)
class GgufInfo:
    architecture: str      # general.architecture, e.g. llama
    quantization: str      # llama.cpp file type, e.g. Q4_1 (F32 / F16 / BF16 when not quantized)
    name: str | None       # general.name, when the file says


def find_gguf(path: Path) -> Path | None:
    """Returns the GGUF file that `path` names (the file, or the only .gguf in a folder), else None."""
    if path.is_file():
        return path if path.suffix == SUFFIX else None
    if not path.is_dir() or (path / "config.json").exists():
        return None                               # a save_pretrained folder wins over a stray .gguf
    files = sorted(path.glob(f"*{SUFFIX}"))
    if len(files) > 1:
        raise RtnError(f"{path} holds {len(files)} .gguf files; pass the one to load: --model {files[0]}")
    return files[0] if files else None


def read_info(path: Path) -> GgufInfo:
    """Returns the architecture and quantization of a GGUF file, or raises a one-line RtnError (truncated, not GGUF).

    Parsing takes seconds, so what a parse found is kept beside the file (`<name>.rtn-info.json`, with
    the file's size and modification time); a file that changed since is parsed again.
    """
    path = Path(path)
    stat = path.stat()
    sidecar = path.with_name(path.name + INFO_SUFFIX)
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        kept = json.loads(sidecar.read_text())
        if kept.get("file") == stamp:
            return GgufInfo(**kept["info"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    info = _read_info(str(path), stat.st_size, stat.st_mtime_ns)
    try:
        scratch = sidecar.with_name(f".{sidecar.name}.{os.getpid()}")
        scratch.write_text(json.dumps({"file": stamp, "info": dataclasses.asdict(info)}))
        os.replace(scratch, sidecar)
    except OSError:
        pass                      # a read-only folder: parse again next time
    return info


INFO_SUFFIX = ".rtn-info.json"


@functools.lru_cache(maxsize=8)
def _read_info(path: str, _size: int, _mtime_ns: int) -> GgufInfo:
    # GGUFReader parses every tensor's header (seconds for a 30-layer model): once per file version and process
    try:
        import gguf
    except ImportError as err:
        raise RtnError("reading a .gguf model needs the gguf package: pip install gguf") from err
    try:
        reader = gguf.GGUFReader(str(path))
        fields = reader.fields
        architecture = _text(fields["general.architecture"])
        file_type = int(fields["general.file_type"].parts[-1][0]) if "general.file_type" in fields else None
        name = _text(fields["general.name"]) if "general.name" in fields else None
        tensor_types = {t.tensor_type.name for t in reader.tensors}
    except Exception as err:      # gguf raises ValueError, KeyError, struct errors on truncated or foreign files
        raise RtnError(f"{path} is not a readable GGUF file (truncated or corrupt? "
                       f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); download it again") from err
    if file_type is not None:
        quantization = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    else:       # older files do not say: name the tensor types themselves
        quantization = "+".join(sorted(tensor_types))
    return GgufInfo(architecture, quantization, name)


def _text(field) -> str:
    return bytes(field.parts[-1]).decode("utf-8")


DEQUANTIZED_MARKER = "rtn_dequantized.json"   # in a save_pretrained folder made by dequantize_once: what it came from


def dequantize_once(gguf: Path, target: Path, log=print) -> Path:
    """Returns `target`, a save_pretrained folder holding `gguf`'s weights dequantized to float32, making it the first time.

    Parsing a GGUF and dequantizing it costs about a minute on 2 cores at every load; the folder
    loads in seconds, holds exactly the numbers a direct load gives (tests/acceptance/
    test_real_model.py), and its marker file keeps the provenance that runs.weights_format and
    runs.quantization report. A folder made from another file (size or mtime differ) is rebuilt.
    """
    import json
    import shutil

    info, stat = read_info(gguf), Path(gguf).stat()
    marker = {"gguf_file": Path(gguf).name, "quantization": info.quantization, "size": stat.st_size,
              "mtime_ns": stat.st_mtime_ns}
    if (target / DEQUANTIZED_MARKER).exists() and json.loads((target / DEQUANTIZED_MARKER).read_text()) == marker:
        return target
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    log(f"dequantizing {Path(gguf).name} ({info.quantization}) once into {target}")
    transformers_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(Path(gguf).parent, gguf_file=Path(gguf).name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(Path(gguf).parent, gguf_file=Path(gguf).name)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_model(model, str(partial / "model.safetensors"), metadata={"format": "pt"})   # tied weights once
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    (partial / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    tokenizer.save_pretrained(partial)
    (partial / DEQUANTIZED_MARKER).write_text(json.dumps(marker, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)     # a killed conversion leaves no folder that looks complete
    return target


def dequantized_from(folder: Path) -> dict | None:
    """Returns the marker of a folder made by dequantize_once ({gguf_file, quantization, ...}), else None."""
    import json
    marker = Path(folder) / DEQUANTIZED_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None
