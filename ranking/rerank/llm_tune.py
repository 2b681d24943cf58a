"""LoRA instruction tuning of the reranker's causal LM: teach it to answer " Yes" for a
candidate the user went on to choose and " No" for one they did not.

The prompts are exactly the reranker's (`ranking.rerank.llm.build_prompt`), and the loss is
the cross-entropy of the answer token only, read at the last position (logits_to_keep=1), so
the model learns the one decision the reranker asks of it and nothing about the prompt text.
Only the LoRA matrices (r=8 on q_proj/v_proj by default) train; the base stays frozen.

The output folder is named by a hash of the examples, the config and the base model, so the
same inputs never train twice and different ones never collide. Training checkpoints the
adapter, the optimizer, the step and the RNG state every `checkpoint_every` steps and resumes
from the last checkpoint: batch order is a function of (seed, step), so a resumed run takes
the same batches, and the same dropout masks, as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from encoders.llm import load_causal_lm, model_identity, set_default_mode
from ranking.rerank.llm import (
    answer_token_ids,
    build_prompt,
    fit_prefix,
    left_pad,
    prompt_token_limit,
)
from recdata.atomic_io import write_text_atomic
from recdata.errors import ConfigError

EXAMPLE_SCHEMA = {"instruction": pl.String, "history": pl.List(pl.String),
                  "title": pl.String, "label": "integer"}
META = "meta.json"


class LoRATuneConfig(BaseModel):
    """LoRA and optimizer settings. The text limits must match the reranker's config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lr: float = Field(2e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(4, ge=1)
    max_steps: int = Field(200, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    seed: int = 0
    max_length: int = Field(512, ge=16, description="prompt tokens; longer prefixes are cut")
    max_instruction_chars: int = Field(300, ge=1)
    max_title_chars: int = Field(120, ge=1)
    max_history: int = Field(10, ge=0)

    def key_fields(self) -> dict[str, Any]:
        """Settings that change the trained adapter (checkpoint spacing does not)."""
        return self.model_dump(mode="json", exclude={"checkpoint_every"})


@dataclass
class TuneResult:
    """A tuned adapter folder: `path` is what `load_causal_lm(base, adapter=path)` and
    `LLMRerankConfig.adapter_path` take. `model` is the in-memory tuned model when this
    result comes from training (None when loaded from disk)."""

    path: Path
    key: str
    steps: int
    losses: list[float]
    base_model: str
    input_hash: str
    config: dict[str, Any]
    resumed_from: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    model: Any = field(default=None, repr=False, compare=False)

    def save(self) -> None:
        meta = {k: v for k, v in asdict(self).items() if k not in {"model", "path"}}
        write_text_atomic(Path(self.path) / META, json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: Path) -> TuneResult:
        meta_file = Path(path) / META
        if not meta_file.exists():
            raise ConfigError(f"adapter folder {str(path)!r} has no {META}")
        return cls(path=Path(path), **json.loads(meta_file.read_text()))


def check_examples(examples: pl.DataFrame) -> pl.DataFrame:
    """The four example columns, validated: right types, no nulls, labels 0/1, not empty."""
    missing = [c for c in EXAMPLE_SCHEMA if c not in examples.columns]
    if missing:
        raise ConfigError(f"examples lack column(s) {missing}; needed: {list(EXAMPLE_SCHEMA)}")
    for col, dtype in EXAMPLE_SCHEMA.items():
        got = examples.schema[col]
        ok = got.is_integer() if dtype == "integer" else got == dtype
        if not ok:
            raise ConfigError(f"examples column {col!r} has type {got}; expected {dtype}")
    if examples.height == 0:
        raise ConfigError("examples is empty; tuning needs at least one labelled example")
    counts = examples.select(list(EXAMPLE_SCHEMA)).null_count().row(0, named=True)
    nulls = {c: n for c, n in counts.items() if n}
    if nulls:
        raise ConfigError(f"examples have nulls in {nulls}")
    bad = examples.filter(~pl.col("label").is_in([0, 1])).height
    if bad:
        raise ConfigError(f"examples column 'label' must be 0 or 1; {bad} row(s) are not")
    return examples.select(list(EXAMPLE_SCHEMA))


def examples_hash(examples: pl.DataFrame) -> str:
    """Content hash of the example columns (order matters: it fixes the batches)."""
    payload = json.dumps(examples.select(list(EXAMPLE_SCHEMA)).to_dict(as_series=False))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def tune_key(cfg: LoRATuneConfig, input_hash: str, base_identity: str) -> str:
    blob = json.dumps({"cfg": cfg.key_fields(), "examples": input_hash, "base": base_identity},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode_examples(examples: pl.DataFrame, tokenizer: Any, cfg: LoRATuneConfig,
                    max_tokens: int | None = None) -> tuple[list[list[int]], np.ndarray]:
    """Token ids of each example's prompt (prefix + suffix, prefix cut to `max_tokens`,
    default cfg.max_length) and the target token: " Yes" for label 1, " No" for label 0."""
    max_tokens = max_tokens or cfg.max_length
    yes, no = answer_token_ids(tokenizer)
    limits = dict(max_instruction_chars=cfg.max_instruction_chars,
                  max_title_chars=cfg.max_title_chars, max_history=cfg.max_history)
    if "system_text" in examples.columns:  # the examples' domain words (llm_examples)
        limits |= {"system_text": examples["system_text"][0],
                   "history_label": examples["history_label"][0]}
    prompts = [build_prompt(i, h, t, **limits) for i, h, t in zip(
        examples["instruction"].to_list(), examples["history"].to_list(),
        examples["title"].to_list(), strict=True)]
    prefixes = tokenizer([p.prefix for p in prompts])["input_ids"]
    suffixes = tokenizer([p.suffix for p in prompts], add_special_tokens=False)["input_ids"]
    ids = [fit_prefix(p, len(s), max_tokens) + s
           for p, s in zip(prefixes, suffixes, strict=True)]
    targets = np.where(examples["label"].to_numpy() == 1, yes, no)
    return ids, targets


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Example indices of 0-based `step`: epochs are seeded permutations, so the batches
    depend only on (seed, step) and a resumed run sees the same ones."""
    epochs, offsets = np.divmod(np.arange(step * batch_size, (step + 1) * batch_size), n)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        here = epochs == epoch
        out[here] = np.random.default_rng([seed, int(epoch)]).permutation(n)[offsets[here]]
    return out


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = sorted(p for p in ckpt_root.glob("step-*") if (p / "state.json").exists())
    return done[-1] if done else None


def _save_checkpoint(model: Any, optimizer: Any, step: int, losses: list[float],
                     ckpt_root: Path) -> None:
    """Adapter, optimizer, step, losses and RNG state, written as one folder renamed into
    place; older checkpoints are removed after the new one is complete."""
    import torch

    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=".step-", suffix=".tmp"))
    model.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "losses": losses}))
    target = ckpt_root / f"step-{step:08d}"
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    for old in ckpt_root.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def _restore_checkpoint(model: Any, optimizer: Any, ckpt: Path) -> tuple[int, list[float]]:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    set_peft_model_state_dict(model, load_file(ckpt / "adapter_model.safetensors",
                                               device=str(device)))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device,
                                         weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = json.loads((ckpt / "state.json").read_text())
    return int(state["step"]), [float(x) for x in state["losses"]]


def tune_lora(cfg: LoRATuneConfig, examples: pl.DataFrame, base_model: Path, out_root: Path,
              resume: bool = True, *, progress: bool = True, device: str | None = None,
              on_step: Callable[[int, float], None] | None = None) -> TuneResult:
    """Train a LoRA adapter on `examples` (columns instruction: str, history: list[str],
    title: str, label: 0/1) over the causal LM folder `base_model`; write it to
    `out_root/lora-<key>/` and return the result. An existing finished folder is returned
    as is; with `resume`, an interrupted run continues from its last checkpoint (without,
    checkpoints are discarded and training starts over). `on_step(step, loss)` is called
    after each optimizer step (1-based step). Uses CUDA when available unless `device`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    examples = check_examples(examples)
    base_model = Path(base_model)
    input_hash = examples_hash(examples)
    base_identity = model_identity(base_model)
    key = tune_key(cfg, input_hash, base_identity)
    final = Path(out_root) / f"lora-{key}"
    ckpt_root = Path(out_root) / f".lora-{key}.checkpoints"
    if (final / META).exists():
        return TuneResult.load(final)
    if not resume:
        shutil.rmtree(ckpt_root, ignore_errors=True)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_causal_lm(base_model)
    ids, targets = encode_examples(examples, tokenizer, cfg,
                                   prompt_token_limit(model, cfg.max_length))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"target_modules {list(cfg.target_modules)} not found in "
                          f"{str(base_model)!r}: {exc}") from exc
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)

    start, losses = 0, []
    ckpt = _latest_checkpoint(ckpt_root) if resume else None
    if ckpt is not None:
        start, losses = _restore_checkpoint(model, optimizer, ckpt)
    bar = tqdm(total=cfg.max_steps, initial=start, disable=not progress, desc="LoRA tuning",
               unit="step")
    for step in range(start, cfg.max_steps):
        rows = batch_indices(len(ids), step, cfg.batch_size, cfg.seed)
        batch, mask = left_pad([ids[i] for i in rows], pad)
        batch, mask = batch.to(device), mask.to(device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = model(input_ids=batch, attention_mask=mask, position_ids=positions,
                       logits_to_keep=1).logits[:, -1, :]
        target = torch.as_tensor(targets[rows], device=device)
        loss = torch.nn.functional.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.max_steps:
            _save_checkpoint(model, optimizer, step + 1, losses, ckpt_root)
        if on_step is not None:
            on_step(step + 1, losses[-1])
    bar.close()

    model.eval()
    result = TuneResult(path=final, key=key, steps=cfg.max_steps, losses=losses,
                        base_model=str(base_model), input_hash=input_hash,
                        config=cfg.model_dump(mode="json"), resumed_from=start,
                        versions=_versions(), model=model)
    _write_final(model, result)
    shutil.rmtree(ckpt_root, ignore_errors=True)
    return result


def _write_final(model: Any, result: TuneResult) -> None:
    """Adapter and meta.json into a temporary folder, renamed onto `result.path`."""
    final = Path(result.path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    set_default_mode(tmp, 0o755)
    try:
        model.save_pretrained(tmp)
        staged = TuneResult(**{**result.__dict__, "path": tmp, "model": None})
        staged.save()
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
