"""Optional LLM reranker: a small causal LM reads the request, the recent history and one
candidate title, and its log P(" Yes") − log P(" No") is fused with the base score.

Why it is shaped this way:

- The prompt is split into a PREFIX shared by every candidate of a request (instructions,
  the request, the history) and a short SUFFIX per candidate. The prefix runs once; its
  key/value cache is repeated across a batch of suffixes, so 20 candidates cost one long
  forward pass plus one batched short one instead of 20 long ones.
- Every text that reaches the prompt is cleaned (control and format characters and runs of
  whitespace become one space), has its double quotes replaced and is cut to a fixed length,
  then sits inside double quotes: a request cannot close its quote, start a new line, or
  pose as a candidate list or an answer. It is cut rather than rejected, because a long
  request still deserves a ranking.
- The model's output is never parsed as text: only two logits are read, as numbers attached
  to the positions of the candidates it was given, so the result is always a permutation of
  the input ids.
- Weight 0 reproduces the base order exactly (ties broken by input position), so the stage
  can be switched on in a pipeline and tuned without changing anything until it helps.
"""

from __future__ import annotations

import copy
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recdata.errors import ConfigError, InvalidRequestError

# The question sits in the shared prefix: every token of the suffix is paid once per
# candidate, so the suffix holds only the candidate and the answer cue. Its words are the
# dataset schema's (recdata.schema.Wording.prompt); this is the domain-free default.
SYSTEM_TEXT = ("You are a recommender. Does the candidate item suit the user's request and "
               "recent items? Answer Yes or No.\n")
HISTORY_LABEL = "recent items"
ANSWER_CUE = "Answer:"
ANSWERS = (" Yes", " No")


class LLMRerankConfig(BaseModel):
    """Settings of the reranker stage. `model_path` None means the packaged Gemma 3 270M,
    converted once under `data_dir/llm`. The text limits must match the ones an adapter was
    tuned with (see `ranking.rerank.llm_tune.LoRATuneConfig`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: Path | None = None
    adapter_path: Path | None = None
    data_dir: Path = Path("data")
    top_n: int = Field(20, ge=1, le=1000, description="how many of the best base candidates "
                                                        "the LLM reorders")
    weight: float = Field(0.5, ge=0.0, le=1.0, description="share of the LLM score in the "
                                                           "fused score; 0 keeps the base order")
    max_instruction_chars: int = Field(300, ge=1)
    max_title_chars: int = Field(120, ge=1)
    max_history: int = Field(10, ge=0, description="most recent history titles in the prompt")
    max_prompt_tokens: int = Field(512, ge=16)
    batch_size: int = Field(32, ge=1, description="candidate suffixes per forward pass")
    system_text: str = Field(SYSTEM_TEXT, description="the question, in the domain's words "
                                                      "(set from the dataset's schema)")
    history_label: str = Field(HISTORY_LABEL, description="what the history is called")


def in_domain_words(cfg: LLMRerankConfig, schema: Any) -> LLMRerankConfig:
    """`cfg` with the question and the history's name in the words of `schema`
    (a recdata.schema.DomainSchema): what the adapter was tuned on for that dataset."""
    w = schema.wording
    return cfg.model_copy(update={"system_text": w.fill(w.prompt),
                                  "history_label": w.fill(w.history_label)})


class Prompt(NamedTuple):
    """One candidate's prompt: `prefix` is shared by all candidates of a request."""

    prefix: str
    suffix: str

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


def bound_text(text: object, max_chars: int) -> str:
    """`text` safe to quote in a prompt: control/format/separator characters become spaces,
    whitespace is collapsed, double quotes become single ones, and it is cut to `max_chars`.
    Anything that is not a string (None, NaN) becomes the empty string."""
    if not isinstance(text, str):
        return ""
    text = text[: 4 * max_chars]  # bound the cleaning cost before looking at each character
    kept = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text)
    cleaned = " ".join(kept.replace('"', "'").split())
    return cleaned[:max_chars].rstrip()


def build_prefix(instruction: object, history_titles: Sequence[object], *,
                 max_instruction_chars: int = 300, max_title_chars: int = 120,
                 max_history: int = 10, system_text: str = SYSTEM_TEXT,
                 history_label: str = HISTORY_LABEL) -> str:
    """System text, the quoted request and the quoted most recent history titles (last
    `max_history`, most recent last), ending with a newline."""
    request = bound_text(instruction, max_instruction_chars)
    recent = list(history_titles)[-max_history:] if max_history else []
    titles = [t for t in (bound_text(t, max_title_chars) for t in recent) if t]
    seen = "; ".join(f'"{t}"' for t in titles) if titles else "nothing yet"
    label = history_label[:1].upper() + history_label[1:]
    return f'{system_text}Request: "{request}"\n{label}: {seen}\n'


def build_suffix(candidate_title: object, *, max_title_chars: int = 120) -> str:
    """The quoted candidate and the answer cue (the answer token follows)."""
    return f'Candidate: "{bound_text(candidate_title, max_title_chars)}"\n{ANSWER_CUE}'


def build_prompt(instruction: object, history_titles: Sequence[object],
                 candidate_title: object, *, max_instruction_chars: int = 300,
                 max_title_chars: int = 120, max_history: int = 10,
                 system_text: str = SYSTEM_TEXT, history_label: str = HISTORY_LABEL) -> Prompt:
    """The full prompt for one candidate, split into shared prefix and per-candidate suffix."""
    prefix = build_prefix(instruction, history_titles, max_instruction_chars=max_instruction_chars,
                          max_title_chars=max_title_chars, max_history=max_history,
                          system_text=system_text, history_label=history_label)
    return Prompt(prefix, build_suffix(candidate_title, max_title_chars=max_title_chars))


def answer_token_ids(tokenizer: Any) -> tuple[int, int]:
    """Token ids of " Yes" and " No" as they follow the answer cue. Read in context first
    ("Answer: Yes" minus "Answer:") so tokenizers that add a leading-space marker agree with
    what the model sees; raises if either answer is not exactly one token."""
    cue = tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
    ids = []
    for answer in ANSWERS:
        full = tokenizer(ANSWER_CUE + answer, add_special_tokens=False)["input_ids"]
        if len(full) == len(cue) + 1 and full[: len(cue)] == cue:
            ids.append(full[-1])
            continue
        alone = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(alone) != 1:
            raise ConfigError(
                f"the tokenizer splits the answer {answer!r} into {len(alone)} tokens "
                f"{alone}; the LLM reranker needs ' Yes' and ' No' as single tokens")
        ids.append(alone[0])
    if ids[0] == ids[1]:
        raise ConfigError(f"the tokenizer maps ' Yes' and ' No' to the same token {ids[0]}")
    return ids[0], ids[1]


def fit_prefix(prefix_ids: list[int], suffix_len: int, max_tokens: int) -> list[int]:
    """Prefix ids cut from the end so that prefix + a suffix of `suffix_len` tokens fits
    `max_tokens`: the suffix (candidate and answer cue) is always kept whole. The text limits
    make this rare; it bounds the cost of a prompt in tokens as they bound it in characters."""
    return prefix_ids[: max(max_tokens - suffix_len, 1)]


def prompt_token_limit(model: Any, max_tokens: int) -> int:
    """`max_tokens`, lowered to the model's sliding attention window if it has one: left
    padding between the cached prefix and a short suffix shifts where the window starts, so
    a prompt must fit inside the window for batched scores to equal single-prompt ones."""
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    return min(max_tokens, window) if isinstance(window, int) and window > 0 else max_tokens


def standardize(x: np.ndarray) -> np.ndarray:
    """z-scores within one list; a constant list gives zeros; +inf/-inf stay at the ends and
    NaN counts as -inf (an unscorable candidate goes last)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.where(x > 0, np.inf, -np.inf)
    finite = np.isfinite(x)
    if finite.any():
        v = x[finite]
        std = v.std()
        z[finite] = (v - v.mean()) / std if std > 0 else 0.0
    return z


def fuse(base_scores: np.ndarray, llm_scores: np.ndarray, weight: float) -> np.ndarray:
    """(1 − weight)·z(base) + weight·z(llm), both standardized within the list so the weight
    means the same for every request. At weight 0 the base scores come back unchanged (as
    float64): z-scoring can round two close scores onto one value, which would let the
    position tie-break reorder them, and weight 0 must keep the base order exactly. A base
    score of -inf or NaN (a candidate the base ruled out) stays last at every weight."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"weight must be within [0, 1], got {weight}")
    if weight == 0.0:
        return np.array(base_scores, dtype=np.float64)
    base = standardize(base_scores)
    llm = standardize(np.nan_to_num(np.asarray(llm_scores, dtype=np.float64), nan=-np.inf))
    if len(base) != len(llm):
        raise ConfigError(f"base_scores has {len(base)} entries but llm_scores {len(llm)}")
    with np.errstate(invalid="ignore"):  # inf - inf where both are unscorable
        fused = (1.0 - weight) * base + weight * llm
    return np.nan_to_num(fused, nan=-np.inf)


def order_by(scores: np.ndarray) -> np.ndarray:
    """Positions sorted by descending score, equal scores by ascending input position."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(len(scores)), -np.nan_to_num(scores, nan=-np.inf)))


class LLMReranker:
    """Scores candidates with a causal LM and reorders the top of a base ranking."""

    def __init__(self, model: Any, tokenizer: Any, cfg: LLMRerankConfig | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.cfg = cfg or LLMRerankConfig()
        self.yes_id, self.no_id = answer_token_ids(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.max_tokens = prompt_token_limit(model, self.cfg.max_prompt_tokens)

    @classmethod
    def load(cls, cfg: LLMRerankConfig) -> LLMReranker:
        """Load the model named by `cfg` (default: the converted Gemma 3 270M) and its
        optional LoRA adapter. This is the slow part; call it once at start-up."""
        from encoders.llm import default_model_dir, load_causal_lm

        path = cfg.model_path or default_model_dir(cfg.data_dir)
        model, tokenizer = load_causal_lm(path, cfg.adapter_path)
        return cls(model, tokenizer, cfg)

    def _prompt_ids(self, instruction: object, history_titles: Sequence[object],
                    candidate_titles: Sequence[object]) -> tuple[list[int], list[list[int]]]:
        c = self.cfg
        prefix = build_prefix(instruction, history_titles,
                              max_instruction_chars=c.max_instruction_chars,
                              max_title_chars=c.max_title_chars, max_history=c.max_history,
                              system_text=c.system_text, history_label=c.history_label)
        suffixes = [build_suffix(t, max_title_chars=c.max_title_chars) for t in candidate_titles]
        prefix_ids = self.tokenizer(prefix)["input_ids"]
        suffix_ids = self.tokenizer(suffixes, add_special_tokens=False)["input_ids"]
        longest = max(len(s) for s in suffix_ids)
        return fit_prefix(prefix_ids, longest, self.max_tokens), suffix_ids

    def score(self, instruction: object, history_titles: Sequence[object],
              candidate_titles: Sequence[object]) -> np.ndarray:
        """log P(" Yes") − log P(" No") after each candidate's prompt (float64, one per
        candidate, in the given order). The prefix runs once; its cache is repeated for each
        batch of suffixes, which are left-padded with the padding masked and positions
        continuing from the prefix, so each score equals that of the prompt run alone.
        Suffixes are batched by length, so little compute goes to padding."""
        if len(candidate_titles) == 0:
            return np.zeros(0)
        import torch

        prefix_ids, suffix_ids = self._prompt_ids(instruction, history_titles, candidate_titles)
        device = next(self.model.parameters()).device
        n_prefix = len(prefix_ids)
        out = np.empty(len(suffix_ids))
        with torch.inference_mode():
            prefix_out = self.model(input_ids=torch.tensor([prefix_ids], device=device),
                                    use_cache=True, logits_to_keep=1)
            cache = prefix_out.past_key_values
            for rows in length_chunks([len(x) for x in suffix_ids], self.cfg.batch_size):
                batch = [suffix_ids[i] for i in rows]
                ids, mask = left_pad(batch, self.pad_id)
                ids, mask = ids.to(device), mask.to(device)
                attention = torch.cat([torch.ones(len(batch), n_prefix, dtype=mask.dtype,
                                                  device=device), mask], dim=1)
                positions = n_prefix + (mask.cumsum(dim=1) - 1).clamp(min=0)
                batch_cache = copy.deepcopy(cache)  # forward appends to the cache in place
                batch_cache.batch_repeat_interleave(len(batch))
                logits = self.model(input_ids=ids, attention_mask=attention,
                                    position_ids=positions, past_key_values=batch_cache,
                                    use_cache=True, logits_to_keep=1).logits[:, -1, :]
                diff = logits[:, self.yes_id].float() - logits[:, self.no_id].float()
                out[rows] = diff.cpu().numpy()
        return out

    def score_uncached(self, instruction: object, history_titles: Sequence[object],
                       candidate_titles: Sequence[object]) -> np.ndarray:
        """The same scores, each full prompt run alone (no cache, no padding): the reference
        the cached path is tested against, and a fallback for models without a cache."""
        if len(candidate_titles) == 0:
            return np.zeros(0)
        import torch

        prefix_ids, suffix_ids = self._prompt_ids(instruction, history_titles, candidate_titles)
        device = next(self.model.parameters()).device
        out = np.empty(len(suffix_ids))
        with torch.inference_mode():
            for i, suffix in enumerate(suffix_ids):
                ids = torch.tensor([prefix_ids + suffix], device=device)
                logits = self.model(input_ids=ids, logits_to_keep=1).logits[0, -1, :]
                out[i] = float(logits[self.yes_id] - logits[self.no_id])
        return out

    def rerank(self, candidate_ids: Sequence[Any], base_scores: Sequence[float],
               instruction: object, history_titles: Sequence[object],
               titles: Sequence[object]) -> tuple[list[Any], np.ndarray]:
        """Reorder the best `top_n` candidates (by base score, ties by input position) by the
        fused score; the rest follow in base order with scores below every reranked one.
        Returns (ids in the new order, their scores), always a permutation of
        `candidate_ids`. `titles` is aligned with `candidate_ids`."""
        ids = list(candidate_ids)
        base = np.asarray(base_scores, dtype=np.float64)
        if not (len(ids) == len(base) == len(titles)):
            raise InvalidRequestError(
                f"candidate_ids, base_scores and titles must have equal lengths, got "
                f"{len(ids)}, {len(base)} and {len(titles)}")
        if len(ids) == 0:
            return [], np.zeros(0)
        base_order = order_by(base)
        head, tail = base_order[: self.cfg.top_n], base_order[self.cfg.top_n:]
        if self.cfg.weight == 0.0:
            head_scores = base[head]  # no model call: the base order stands
        else:
            llm = self.score(instruction, history_titles, [titles[i] for i in head])
            head_scores = fuse(base[head], llm, self.cfg.weight)
        head_order = order_by(head_scores)  # ties keep the base order: head is base-sorted
        floor = np.nan_to_num(head_scores, nan=-np.inf).min()
        step = max(1.0, abs(floor) * 1e-6) if np.isfinite(floor) else 1.0  # visible at 1e20
        tail_scores = floor - step * (1.0 + np.arange(len(tail), dtype=np.float64))
        order = np.concatenate([head[head_order], tail])
        scores = np.concatenate([head_scores[head_order], tail_scores])
        return [ids[i] for i in order], scores


def length_chunks(lengths: Sequence[int], batch_size: int,
                  slack: float = 1.25) -> list[np.ndarray]:
    """Indices grouped for batching: sorted by length, a new group starts when the group is
    full or the next length exceeds `slack` × the group's shortest, which bounds the share of
    padding (one long foreign title would otherwise pad every row of the batch)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    chunks: list[np.ndarray] = []
    current: list[int] = []
    for i in order.tolist():
        if current and (len(current) >= batch_size or lengths[i] > slack * lengths[current[0]]):
            chunks.append(np.asarray(current))
            current = []
        current.append(i)
    if current:
        chunks.append(np.asarray(current))
    return chunks


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """(ids, mask) tensors with each sequence right-aligned, so every row's last position is
    its last real token (read with logits_to_keep=1)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if len(s):
            ids[row, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[row, width - len(s):] = 1
    return ids, mask
