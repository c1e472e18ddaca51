"""DPO micro-batch layouts: how the pairs of one TRL batch are laid out for the model's forward.

  padded         TRL's own batch: the chosen rows, then the rejected rows, each padded to the longest (baseline)
  packed         every sequence once, several to a row with no padding between them; a block-diagonal causal mask
                 keeps attention inside each sequence and position ids restart at 0 for each
  prefix_shared  each pair as one sequence: shared prefix (the prompt) + chosen + rejected; rejected sees the prefix
                 but not chosen and its position ids restart where the prefix ends; such triples packed into rows

With flash_attention_2/3 there is no dense mask: `packed` puts every sequence in one row and transformers finds the
sequence boundaries from the position ids (varlen attention); `prefix_shared` needs the mask, so `auto` picks `packed`.

A layout is built from TRL's collated batch (input_ids, attention_mask, labels; chosen rows first), so TRL's
collator, truncation and data pipeline stay as they are. `source`/`target`/`dest` say, for every response token,
which hidden state of the layout predicts it, the token, and where its value goes in TRL's [2B, T-1] per-token
outputs: TRL then computes its losses and metrics from the numbers it would have computed itself.
The layout changes, the math does not: tests/test_layouts.py checks the log-probs against `padded`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from transformers import AutoConfig, LlamaConfig

from train.core.errors import ConfigError
from train.config.choices import Batching

LAYOUTS = (Batching.padded, Batching.packed, Batching.prefix_shared)  # dpo.batching=, besides `auto`
# TRL's own batch (chosen rows, then rejected rows, padded): what its DPOTrainer runs. dpo.batching's default is
# the config's (conf/dpo/default.yaml).
TRL_LAYOUT = Batching.padded
AUTO = Batching.auto
DPO_DEFAULT_MAX_LENGTH = 1024  # trl.DPOConfig's max_length when dpo.args does not set one (TRL 1.16)
# Architectures whose forward is checked exact with a 4D mask and explicit position ids (tests/test_layouts.py).
# Others may add soft-capped logits or a logit scale that the layout path does not apply. A sliding window is
# handled by layout_model_type below.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "phi3")
# How each attention implementation is told where a sequence may look. A 4D mask in transformers 5.24: sdpa reads a
# boolean one (True = attend), eager adds the mask to the scores, so it needs 0 / dtype-min floats (a boolean mask
# there gave log-probs off by ~0.7, FACTS.md). Flash attention takes no dense mask ("varlen"): with batch size 1 and
# position ids that restart at 0, transformers calls flash_attn_varlen_func with the boundaries it finds in the
# position ids (modeling_flash_attention_utils._is_packed_sequence; the padding-free path of its
# DataCollatorWithFlattening). Boundaries cannot say "rejected skips chosen", so prefix_shared needs a 4D mask.
# The varlen layout is checked on CPU through sdpa, which builds its block mask from the same position ids
# (masking_utils.find_packed_sequence_indices); the flash kernel itself needs a GPU.
MASK_KINDS = {"sdpa": "bool", "eager": "additive", "flash_attention_2": "varlen", "flash_attention_3": "varlen"}
VARLEN = "varlen"
# `auto` takes the first of these that can run: the prompt once per pair, then every sequence once.
PREFERENCE = (Batching.prefix_shared, Batching.packed)
BRANCH_SHARED, BRANCH_CHOSEN, BRANCH_REJECTED = 0, 1, 2


def unsupported_reason(layout: str, model_type: str | None, attn_implementation: str | None) -> str | None:
    """Why `layout` (packed or prefix_shared) cannot run on this model, or None when it can."""
    if model_type is not None and " with sliding_window " in model_type:
        return f"{model_type}: the layout's own mask would replace the window (raise the window or use padded)"
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    kind = MASK_KINDS.get(attn_implementation)
    if kind is None:
        return (f"attn_implementation={attn_implementation} takes neither a 4D mask nor packed position ids "
                f"(supported: {', '.join(MASK_KINDS)})")
    if layout == Batching.prefix_shared and kind == VARLEN:
        return (f"attn_implementation={attn_implementation} takes sequence boundaries, not the 4D mask prefix sharing "
                f"needs (packed works with it; prefix_shared with sdpa or eager)")
    return None


def resolve(requested: str, model_type: str | None, attn_implementation: str | None) -> tuple[str, str | None]:
    """(layout to use, one line saying why `auto` did not take the fastest layout, or None). An explicit layout
    that cannot work on this model is refused with ConfigError."""
    if requested != AUTO and requested not in LAYOUTS:
        raise ConfigError(f"dpo.batching={requested}: choose one of {AUTO}, {', '.join(LAYOUTS)}")
    if requested == Batching.padded:
        return Batching.padded, None
    if requested != AUTO:
        reason = unsupported_reason(requested, model_type, attn_implementation)
        if reason is not None:
            raise ConfigError(f"dpo.batching={requested}: {reason}; use dpo.batching=padded (or auto)")
        return requested, None
    reasons = [unsupported_reason(layout, model_type, attn_implementation) for layout in PREFERENCE]
    for layout, reason in zip(PREFERENCE, reasons, strict=True):
        if reason is None:
            return layout, (None if layout == PREFERENCE[0] else
                            f"dpo.batching=auto: using {layout}, since {PREFERENCE[0]}: {reasons[0]}")
    return Batching.padded, f"dpo.batching=auto: using padded, since {reasons[-1]}"


def layout_model_type(config, max_length: int | None) -> str:
    """The model type, marked unsupported when a sliding window could cut attention inside one sequence. The layouts
    pass their own 4D mask, which takes the place of the model's sliding-window mask, so they are exact only while
    every sequence fits in the window (Mistral-7B-v0.1: 4096; later Mistrals and Qwen2 by default: no window)."""
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", None) is False:
        window = None  # Qwen2/Qwen3 keep sliding_window in their config but apply it only with use_sliding_window
    if window is not None and (max_length is None or window < max_length):
        return f"{config.model_type} with sliding_window {window} < max_length {max_length}"
    return config.model_type


def local_model_type(name_or_path: str, revision: str | None, trust_remote_code: bool,
                     max_length: int | None) -> str | None:
    """layout_model_type from a local directory or the hub cache; None when it is not on this disk (no download at
    start: the trainer checks the loaded model again)."""
    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision, local_files_only=True,
                                            trust_remote_code=trust_remote_code)
    except Exception:  # not local: decided once the trainer has loaded the model
        return None
    return layout_model_type(config, max_length)


def check(cfg: DictConfig) -> tuple[str, str | None] | None:
    """At start: an unknown dpo.batching, or an explicit layout this model or attention cannot run, in one line.
    Returns resolve's answer when the model's type is known now (a local model, the embedded one): the trainer
    uses it, its policy being this model trained further (same type, window and attention); None when the model
    is not on this disk yet: the trainer decides on the loaded model."""
    model = cfg.model
    # The embedded tiny model is a Llama (train/models/tiny.py) and is built only later.
    model_type = LlamaConfig.model_type if model.tiny is not None else \
        local_model_type(model.name_or_path, model.revision, model.trust_remote_code,
                         cfg.dpo.args.get("max_length", DPO_DEFAULT_MAX_LENGTH))
    resolved = resolve(cfg.dpo.batching, model_type or SUPPORTED_MODEL_TYPES[0], model.attn_implementation)
    return resolved if model_type is not None else None


@dataclass
class Layout:
    """One micro-batch in rows of length L. `unit` numbers the sequences (packed) or triples (prefix_shared) of a
    row, -1 on padding; `branch` marks shared-prefix / chosen-tail / rejected-tail tokens of a triple."""

    input_ids: torch.Tensor  # [R, L]
    position_ids: torch.Tensor  # [R, L]
    unit: torch.Tensor  # [R, L]
    branch: torch.Tensor  # [R, L]
    source: torch.Tensor  # [N] index into the flattened [R*L] hidden states: the one predicting each scored token
    target: torch.Tensor  # [N] the scored token ids
    dest: torch.Tensor  # [N] index into TRL's flattened [2B*(T-1)] per-token outputs

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    def attention_mask(self, kind: str, dtype: torch.dtype) -> torch.Tensor:
        """[R, 1, L, L]: query i may attend key j when both are in the same unit, j <= i, and not (i in a rejected
        tail, j in the chosen tail). Padding attends only to itself, so no row of the mask is empty (NaN in sdpa)."""
        unit, branch = self.unit, self.branch
        length = unit.size(1)
        same = (unit[:, :, None] == unit[:, None, :]) & (unit[:, :, None] >= 0)
        causal = torch.ones(length, length, dtype=torch.bool, device=unit.device).tril()
        crossing = (branch[:, :, None] == BRANCH_REJECTED) & (branch[:, None, :] == BRANCH_CHOSEN)
        itself = torch.eye(length, dtype=torch.bool, device=unit.device)
        allowed = ((same & causal & ~crossing) | itself)[:, None]
        if kind == "bool":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=unit.device).masked_fill(~allowed, torch.finfo(dtype).min)


def shared_prefix_length(chosen: list[int], rejected: list[int]) -> int:
    """Leading tokens two sequences have in common: the prompt, and any identical start of the responses (sharing
    those too is exact: same tokens at the same positions give the same hidden states)."""
    n = min(len(chosen), len(rejected))
    for i in range(n):
        if chosen[i] != rejected[i]:
            return i
    return n


def pack_rows(lengths: list[int]) -> list[list[int]]:
    """First-fit decreasing into rows as long as the longest unit: fewer rows than units where short ones fit
    together, while no row is longer than padded's rows (dense-mask attention costs the square of a row's length)."""
    capacity = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for unit in sorted(range(len(lengths)), key=lambda u: (-lengths[u], u)):
        row = next((r for r, space in enumerate(free) if space >= lengths[unit]), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(unit)
        free[row] -= lengths[unit]
    return rows


def units_of(layout: str, ids: list[list[int]]) -> list[list[tuple[int, int, int, int]]]:
    """Each unit as pieces (padded row, start, end, branch); `ids` are the padded rows' real tokens, chosen first."""
    if layout == Batching.packed:
        return [[(row, 0, len(tokens), BRANCH_SHARED)] for row, tokens in enumerate(ids)]
    pairs = len(ids) // 2
    units = []
    for pair in range(pairs):
        chosen, rejected = ids[pair], ids[pairs + pair]
        shared = shared_prefix_length(chosen, rejected)
        units.append([(pair, 0, shared, BRANCH_SHARED), (pair, shared, len(chosen), BRANCH_CHOSEN),
                      (pairs + pair, shared, len(rejected), BRANCH_REJECTED)])
    return units


def build(layout: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
          one_row: bool = False) -> Layout:
    """The `layout` of TRL's right-padded batch (labels: input_ids with -100 outside the responses). `one_row`: every
    unit in a single row with no padding at all (varlen attention, which has no dense mask to pay for)."""
    device = input_ids.device
    input_ids, labels = input_ids.cpu(), labels.cpu()
    rows_in, width = input_ids.shape
    attention_mask = attention_mask.cpu().bool()
    lengths = attention_mask.sum(dim=1)
    if not torch.equal(attention_mask, torch.arange(width)[None, :] < lengths[:, None]):
        raise ValueError("a layout is built from TRL's right-padded batch; this one has padding elsewhere")
    lengths = lengths.tolist()
    ids = [input_ids[row, :lengths[row]].tolist() for row in range(rows_in)]
    units = units_of(layout, ids)
    unit_lengths = [sum(end - start for _, start, end, _ in pieces) for pieces in units]
    rows = [list(range(len(units)))] if one_row else pack_rows(unit_lengths)
    length = sum(unit_lengths) if one_row else max(unit_lengths)
    shape = (len(rows), length)
    packed_ids = torch.zeros(shape, dtype=input_ids.dtype)
    position_ids = torch.zeros(shape, dtype=torch.long)
    unit_ids = torch.full(shape, -1, dtype=torch.long)
    branch = torch.zeros(shape, dtype=torch.long)
    # where each token of the padded batch sits in the layout (flat index), -1 where it is not laid out
    location = torch.full((rows_in, width), -1, dtype=torch.long)
    for r, members in enumerate(rows):
        offset = 0
        for slot, unit in enumerate(members):
            for row, start, end, kind in units[unit]:
                span = slice(offset, offset + end - start)
                packed_ids[r, span] = input_ids[row, start:end]
                position_ids[r, span] = torch.arange(start, end)
                unit_ids[r, span] = slot
                branch[r, span] = kind
                location[row, start:end] = r * length + torch.arange(offset, offset + end - start)
                offset += end - start
    if layout == Batching.prefix_shared:  # a rejected row's shared prefix is the chosen row's
        pairs = rows_in // 2
        for pair in range(pairs):
            shared = units[pair][0][2]
            location[pairs + pair, :shared] = location[pair, :shared]
    scored = labels[:, 1:] != -100
    source = location[:, :-1][scored]
    if (source < 0).any():
        raise ValueError("a scored token's predecessor is not in the layout (is the batch right-padded?)")
    dest = torch.arange(rows_in * (width - 1)).view(rows_in, width - 1)[scored]
    return Layout(
        input_ids=packed_ids.to(device), position_ids=position_ids.to(device), unit=unit_ids.to(device),
        branch=branch.to(device), source=source.to(device), target=labels[:, 1:][scored].to(device),
        dest=dest.to(device),
    )
