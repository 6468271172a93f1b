"""Where models, checkpoints, tokenizers and corpora come from: local folders or the hub.

Every failure is turned into a one-line RtnError that says what to do.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rtn.errors import RtnError
from rtn.ingest import weight_files
from rtn.ingest.gguf_file import dequantized_from, find_gguf, read_info

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
CORPUS_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
OFFLINE_HINT = "the Hugging Face hub is unreachable from here; download it and pass a local folder"


@dataclass(frozen=True)
class CheckpointRef:
    step: int                 # training step (-1 when a final checkpoint does not say)
    revision: str | None      # hub revision or checkpoint folder name
    source: str               # local folder or hub id to load from
    tokens_seen: int | None   # training tokens seen, when the checkpoint records it
    gguf_file: str | None = None  # file name inside `source` when the weights are a GGUF file (llama.cpp)

    def load_kwargs(self) -> dict:
        """Returns the from_pretrained keyword arguments that pick this checkpoint's files."""
        if self.gguf_file:
            return {"gguf_file": self.gguf_file}
        return {"revision": None if is_local(self.source) else self.revision}


def is_local(spec: str) -> bool:
    """Returns True when `spec` names a path rather than a hub id like `EleutherAI/pythia-70m`."""
    return Path(spec).exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1


def _has_weights(folder: Path) -> bool:
    return any((folder / name).exists() for name in WEIGHT_FILES) or any(folder.glob("model-*.safetensors"))


def _step_of(name: str | None, folder: Path | None = None, trailing_digits: bool = False) -> int:
    """Returns a checkpoint's training step: its rtn_checkpoint.json's, a `stepN` revision's N, or (for the children
    of a checkpoints folder, `trailing_digits`) the number its name ends with; -1 when nothing says."""
    if folder is not None and (folder / "rtn_checkpoint.json").exists():
        return int(_checkpoint_meta(folder)["step"])
    match = re.fullmatch(r"step(\d+)", name or "") or (trailing_digits and re.search(r"(\d+)$", name or ""))
    return int(match.group(1)) if match else -1   # a lone folder named gpt2 is not step 2


def _checkpoint_meta(folder: Path) -> dict:
    meta = folder / "rtn_checkpoint.json"
    try:
        values = json.loads(meta.read_text())
        int(values["step"])
        return values
    except (ValueError, KeyError, TypeError) as err:
        raise RtnError(f"{meta} is corrupt: it must be JSON with an integer 'step'") from err


def _tokens_seen(folder: Path) -> int | None:
    return _checkpoint_meta(folder).get("tokens_seen") if (folder / "rtn_checkpoint.json").exists() else None


def _local_ref(folder: Path, in_checkpoints_folder: bool = False) -> CheckpointRef:
    if not (folder / "config.json").exists():
        raise RtnError(f"{folder} has no config.json: pass a save_pretrained model folder")
    if not _has_weights(folder):
        raise RtnError(f"{folder} has no model weights ({' or '.join(WEIGHT_FILES[:2])})")
    step = _step_of(folder.name, folder, trailing_digits=in_checkpoints_folder)
    return CheckpointRef(step, folder.name, os.path.abspath(folder), _tokens_seen(folder))


def _checkpoint_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and (p / "config.json").exists()),
                  key=lambda p: (_step_of(p.name, p, trailing_digits=True), p.name))


def _pick(refs: list[CheckpointRef], spec: str, where: str) -> list[CheckpointRef]:
    if spec == "all":
        return refs
    if spec == "final":
        return refs[-1:]
    by_name = {ref.revision: ref for ref in refs}
    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise RtnError(f"unknown revision {unknown[0]!r} in {where}; it has {', '.join(by_name)}")
    return [by_name[name] for name in wanted]


def resolve_checkpoints(model: str, spec: str = "final") -> list[CheckpointRef]:
    """Returns the checkpoints to ingest, validated, in step order.

    `spec` is `final`, `all`, a comma list of revisions, or a folder of checkpoint folders.
    """
    if spec not in ("final", "all") and Path(spec).is_dir():
        folders = _checkpoint_folders(Path(spec))
        if not folders:
            raise RtnError(f"checkpoint folder {spec} holds no model folders (with config.json)")
        return _distinct_steps(sorted((_local_ref(f, True) for f in folders), key=lambda r: r.step), spec)
    if is_local(model):
        folder = Path(model).expanduser()
        if not folder.exists():
            raise RtnError(f"model path {model} does not exist")
        gguf = find_gguf(folder)
        if gguf is not None:
            if spec not in ("final", "all"):
                raise RtnError(f"unknown revision {spec!r}: {model} is a single GGUF checkpoint (use --checkpoints final)")
            read_info(gguf)     # a truncated or foreign file is named before transformers tries it
            return [CheckpointRef(-1, gguf.name, os.path.abspath(gguf.parent), None, gguf_file=gguf.name)]
        if (folder / "config.json").exists():
            if spec not in ("final", "all"):
                raise RtnError(f"unknown revision {spec!r}: {model} is a single checkpoint (use --checkpoints final)")
            return [_local_ref(folder)]
        folders = _checkpoint_folders(folder)
        if not folders:
            raise RtnError(f"{model} is neither a model folder (config.json) nor a folder of checkpoint folders")
        return _distinct_steps(sorted(_pick([_local_ref(f, True) for f in folders], spec, model), key=lambda r: r.step),
                               model)
    return _hub_checkpoints(model, spec)


def _hub_checkpoints(model: str, spec: str) -> list[CheckpointRef]:
    if spec == "final":
        return [CheckpointRef(-1, None, model, None)]
    if spec == "all":
        try:
            from huggingface_hub import list_repo_refs
            branches = [b.name for b in list_repo_refs(model).branches if re.fullmatch(r"step\d+", b.name)]
        except Exception as err:  # offline, unknown repo, no permission
            raise RtnError(f"cannot list revisions of {model}: {OFFLINE_HINT}") from err
        revisions = branches or ["main"]
    else:
        revisions = [name.strip() for name in spec.split(",") if name.strip()]
    return _distinct_steps(sorted((CheckpointRef(_step_of(r), r, model, None) for r in revisions), key=lambda r: r.step),
                           model)


def _distinct_steps(refs: list[CheckpointRef], where: str) -> list[CheckpointRef]:
    """Returns `refs`, or raises RtnError when two of them claim one step (one would overwrite the other's rows)."""
    for before, after in itertools.pairwise(refs):
        if before.step == after.step:
            raise RtnError(f"{where}: checkpoints {before.revision} and {after.revision} both have step {before.step}; "
                           f"name them stepN or give each an rtn_checkpoint.json")
    return refs


def pick_device(name: str):
    """Returns the torch device for --device auto|cpu|cuda."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RtnError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise RtnError(f"--device {name} is not one of auto, cpu, cuda")
    return torch.device(name)


def load_config(ref: CheckpointRef):
    """Returns the model config of a checkpoint (raises RtnError when it cannot be had)."""
    from transformers import AutoConfig
    config_file = Path(ref.source) / "config.json"
    if config_file.is_file():
        try:
            values = json.loads(config_file.read_text())
        except ValueError as err:     # UnicodeDecodeError is one
            raise RtnError(f"{config_file} is corrupt ({str(err).splitlines()[0]}); save or download the model again") from err
        if not isinstance(values, dict):
            raise RtnError(f"{config_file} is corrupt (not a JSON object); save or download the model again")
    try:
        return AutoConfig.from_pretrained(ref.source, **ref.load_kwargs())
    except ValueError as err:  # an unrecognised model_type
        raise RtnError(f"unknown architecture in {ref.source}: {str(err).splitlines()[0]}") from err
    except OSError as err:
        raise _load_error(ref, err) from err
    except Exception as err:    # e.g. a field of the wrong type, refused by the config's validation
        raise RtnError(f"{Path(ref.source) / 'config.json'} is not a usable config ({type(err).__name__}: "
                       f"{(str(err).strip().splitlines() or [''])[-1].strip()})") from err


def check_weights(ref: CheckpointRef, model_config) -> None:
    """Raises a one-line RtnError when a local checkpoint's weight files are missing, truncated, corrupt or of other
    shapes than its `model_config` says (hub files are checked by their download, GGUF files by read_info)."""
    if not ref.gguf_file and is_local(ref.source):
        weight_files.check_folder(Path(ref.source))
        weight_files.check_shapes(Path(ref.source), model_config)


def _load_error(ref: CheckpointRef, err: Exception) -> RtnError:
    if is_local(ref.source):
        return RtnError(f"cannot load {ref.source}: {str(err).splitlines()[0]}")
    text = str(err).lower()
    if "revision" in text or "not a valid git identifier" in text:
        return RtnError(f"unknown revision {ref.revision!r} of {ref.source}")
    return RtnError(f"cannot load {ref.source}@{ref.revision or 'main'}: {OFFLINE_HINT}")


def load_model(ref: CheckpointRef, dtype, device):
    """Returns the causal LM of a checkpoint in eval mode on `device`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging
    transformers_logging.disable_progress_bar()  # one "Loading weights" bar per checkpoint drowns rtn's own
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.source, dtype=dtype, **ref.load_kwargs())
    except (OSError, ValueError) as err:
        raise _load_error(ref, err) from err
    except Exception as err:   # e.g. SafetensorError from a hub file that changed since check_weights could look
        raise RtnError(f"cannot load the weights of {ref.source}: {type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''}") from err
    return model.to(device).eval()


def load_tokenizer(spec: str, revision: str | None = None, gguf_file: str | None = None):
    """Returns the tokenizer saved in a folder or GGUF file (or the hub id's tokenizer)."""
    from transformers import AutoTokenizer
    try:
        if gguf_file:
            return AutoTokenizer.from_pretrained(spec, gguf_file=gguf_file)
        return AutoTokenizer.from_pretrained(spec, revision=None if is_local(spec) else revision)
    except (OSError, ValueError, TypeError) as err:
        where = spec if is_local(spec) else f"{spec} ({OFFLINE_HINT})"
        raise RtnError(f"no tokenizer could be loaded from {where}; pass --tokenizer PATH") from err


def weights_format(ref: CheckpointRef) -> tuple[str | None, str | None]:
    """Returns (file format, quantization) of weights dequantized on load: ('gguf', 'Q4_1'); (None, None) otherwise."""
    if not ref.gguf_file:
        marker = dequantized_from(Path(ref.source)) if is_local(ref.source) else None   # rtn demo --real's cache
        return ("gguf", marker["quantization"]) if marker else (None, None)
    return "gguf", read_info(Path(ref.source) / ref.gguf_file).quantization


def tokenizer_hash(tokenizer) -> str:
    """Returns a short hash of the tokenizer's vocabulary, so corpora are keyed by tokenizer too."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:12]


def corpus_files(spec: str) -> tuple[str, list[str]]:
    """Returns (datasets builder, files) of a local corpus file or folder."""
    path = Path(spec).expanduser()
    files = sorted(p for p in path.rglob("*") if p.suffix in CORPUS_SUFFIXES) if path.is_dir() else [path]
    if not files or not path.exists():
        raise RtnError(f"corpus {spec} does not exist or holds no .txt, .jsonl or .parquet file")
    builders = {CORPUS_SUFFIXES.get(p.suffix) for p in files}
    if None in builders or len(builders) > 1:
        raise RtnError(f"corpus {spec}: use one kind of file among {', '.join(CORPUS_SUFFIXES)}")
    return builders.pop(), [str(p) for p in files]


def load_documents(spec: str, max_documents: int):
    """Returns (documents, content sha256) of a local corpus or a hub data set `name[:config[:split]]`."""
    import datasets
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        if is_local(spec) or Path(spec).suffix in CORPUS_SUFFIXES:
            builder, files = corpus_files(spec)
            rows = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
        else:
            name, config, split = (spec.split(":") + [None, None])[:3]
            rows = datasets.load_dataset(name, config, split=split or "train", streaming=True)
        documents = []
        for number, row in enumerate(rows, start=1):
            text = row.get("text")
            if text is None:    # a column missing from some rows reads as None there
                present = [name for name, value in row.items() if value is not None]
                raise RtnError(f"corpus {spec}: document {number} has no 'text' field"
                               f" (it has {', '.join(present) or 'nothing'})")
            if not isinstance(text, str):
                raise RtnError(f"corpus {spec}: document {number}'s 'text' field is not a string "
                               f"({type(text).__name__} {str(text)[:40]})")
            if text.strip():
                documents.append(text)
            if len(documents) >= max_documents:
                break
    except RtnError:
        raise
    except Exception as err:
        raise RtnError(f"cannot read corpus {spec}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                       + ("" if is_local(spec) else f" ({OFFLINE_HINT})")) from err
    if not documents:
        raise RtnError(f"corpus {spec} is empty: it has no non-blank text")
    digest = hashlib.sha256("\x1e".join(documents).encode()).hexdigest()
    return documents, digest
