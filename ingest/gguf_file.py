"""GGUF model files (llama.cpp's format): find one, read what it says about itself.

transformers loads a GGUF with `from_pretrained(folder, gguf_file=name)` and dequantizes its
weights to float; rtn records which quantization they came from, because the spectra of
dequantized weights carry its rounding.
"""
from __future__ import annotations

import functools
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
    """Returns the architecture and quantization of a GGUF file, or raises a one-line RtnError (truncated, not GGUF)."""
    stat = Path(path).stat()
    return _read_info(str(path), stat.st_size, stat.st_mtime_ns)


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
