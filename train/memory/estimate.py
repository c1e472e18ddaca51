"""Bytes per GPU of one DPO training step, from the architecture numbers alone: the analytic memory plan.

Parts (each a function below, all in bytes per GPU):
  params, grads, optimizer  model states. Under DeepSpeed with 16-bit training, DeepSpeed's own estimators
                            (estimate_zero2/3_model_states_mem_needs, which return the numbers their
                            `*_all_cold` wrappers print); without DeepSpeed, what torch's AdamW holds.
  reference                 the frozen reference copy (dpo.reference=model), sharded like the policy under ZeRO-3.
  activations               what autograd saves for the backward, per decoder layer and token, counted tensor
                            by tensor on the traced step (tests/helpers/memory_trace.py); a DPO step runs chosen
                            and rejected as one batch of 2 x micro-batch sequences of max_length (TRL's
                            _compute_loss concatenates them).
  logits                    TRL 1.16 never builds the [tokens, vocab] logits: its fused LM head
                            (trl/kernels/chunked_logprob.py) projects tiles of 4096 tokens x 32768 vocabulary
                            entries in the compute dtype, folds them into fp32 per-token statistics, and in the
                            backward accumulates the head's weight gradient in fp32 ([vocab, hidden]) before
                            casting it to the weight dtype. Without Triton (CPU) the fold runs in torch and
                            makes fp32 copies of each tile.
  buffers                   the CUDA context and the communication buffers of DDP / DeepSpeed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from train.config.choices import Reference, ZeroOption
from train.memory.architecture import Architecture

GIB = 2**30
ZERO_OPTIONS = tuple(ZeroOption)  # the deepspeed group's options
ZERO_STAGE = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "zero3_offload": 3}
# trl/kernels/chunked_logprob.py: TOKEN_CHUNK_SIZE and the trainer's _CHUNKED_LOGPROB_CHUNK_SIZE.
HEAD_TOKENS_PER_TILE, HEAD_VOCAB_PER_TILE = 4096, 32768
# The torch fold's fp32 tile copies alive at once in its backward (_backward_tile: y, z, log_p, p, grad and the
# products that update grad), counted on the traced step; the Triton fold keeps its tile in registers.
TORCH_FOLD_TILE_COPIES = 7
HEAD_STATS_PER_TOKEN = 7  # fp32 running statistics per token in ChunkedLogProbFunction.forward
# CUDA context, cuBLAS workspaces and the caching allocator's slack, per GPU. A planning constant, not a
# measurement made here (no GPU): the context alone is ~0.5 GiB on recent NVIDIA GPUs with torch 2.x.
CUDA_FIXED_BYTES = 1 * GIB
ALLGATHER_BUCKET = 500_000_000  # ZeRO-1/2 default allgather_bucket_size (elements)


@dataclass(frozen=True)
class Setting:
    """One configuration of a DPO step on a cluster: what the plan's candidates vary, and what they share."""

    zero: str  # one of ZERO_OPTIONS
    reference: str  # model, precomputed or lora
    gradient_checkpointing: bool
    micro_batch: int  # pairs per GPU per forward (dpo.args.per_device_train_batch_size)
    grad_accum: int  # micro-batches per optimizer step: micro_batch x grad_accum x GPUs is the global batch
    max_length: int  # tokens per sequence (dpo.args.max_length)
    gpus_per_node: int = 1
    nodes: int = 1
    weight_bytes: int = 2  # model.dtype: 2 for bfloat16/float16, 4 for float32
    lora_params: int = 0  # trainable adapter parameters when reference=lora
    triton: bool = True  # the fused LM head's Triton fold (GPUs); False: its torch fold (CPU, the fake trace)
    cuda: bool = True  # count the CUDA context

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def sequences(self) -> int:
        return 2 * self.micro_batch  # chosen and rejected, concatenated into one batch


@dataclass(frozen=True)
class Breakdown:
    params: int
    grads: int
    optimizer: int
    reference: int
    activations: int
    logits: int
    buffers: int

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    def gb(self) -> dict[str, float]:
        """The figures in GiB (2**30 bytes, as DeepSpeed's estimators print them), total included."""
        return {k: round(v / GIB, 2) for k, v in {**asdict(self), "total": self.total}.items()}


def plan(arch: Architecture, s: Setting) -> Breakdown:
    params, grads, optimizer = model_states(arch, s)
    return Breakdown(params, grads, optimizer, reference_bytes(arch, s), activation_bytes(arch, s),
                     logits_bytes(arch, s), buffer_bytes(arch, s))


def deepspeed_model_states(total_params: int, largest_layer: int, s: Setting) -> int:
    """DeepSpeed's estimate of params + grads + optimizer states per GPU (ZeRO-2 for stages 1-2: DeepSpeed has
    none for stage 1, which is never smaller than it). Needs 16-bit training: its multipliers assume it."""
    if ZERO_STAGE[s.zero] == 3:
        offload = s.zero == ZeroOption.zero3_offload
        _, gpu, _ = estimate_zero3_model_states_mem_needs(total_params, largest_layer, s.gpus_per_node, s.nodes,
                                                          cpu_offload=offload, cpu_offload_params=offload)
        return gpu
    _, gpu = estimate_zero2_model_states_mem_needs(total_params, s.gpus_per_node, s.nodes, cpu_offload=False)
    return gpu


def model_states(arch: Architecture, s: Setting) -> tuple[int, int, int]:
    """(params, grads, optimizer) per GPU. The DeepSpeed figures are split by its own comment in
    estimate_zero2_model_states_mem_needs (16-bit params; 2 + 4 bytes of 16-bit and fp32 gradients; 4 + 8 of
    fp32 master weights and Adam moments; ZeRO-3: the 16-bit params and the gathered largest layer, 4 bytes of
    gradients, the rest optimizer) and sum to its estimate exactly. ZeRO-1 keeps the full 16-bit
    gradients on every GPU (only the optimizer is partitioned). LoRA: the frozen base in the weight dtype,
    and fp32 adapters (PEFT's autocast_adapter_dtype) with their gradients and Adam moments."""
    P, N, w = arch.num_parameters, s.gpus, s.weight_bytes
    if s.reference == Reference.lora:
        base = (w * P // N + 4 * arch.largest_layer_params) if ZERO_STAGE[s.zero] == 3 else w * P
        if s.zero == ZeroOption.zero3_offload:
            base = 4 * arch.largest_layer_params
        return base + 4 * s.lora_params, 4 * s.lora_params, 8 * s.lora_params
    if s.zero == ZeroOption.none:
        # Plain torch: gradients and AdamW's two moments in the weights' dtype (pure bf16 with bf16 weights).
        return w * P, w * P, 2 * w * P
    total = deepspeed_model_states(P, arch.largest_layer_params, s)
    if s.zero == ZeroOption.zero3_offload:
        return total, 0, 0  # only the gathered working layer stays on the GPU
    if ZERO_STAGE[s.zero] == 3:
        params, grads = 2 * P // N + 4 * arch.largest_layer_params, 4 * P // N
    else:
        params, grads = 2 * P, 6 * P // N
    optimizer = total - params - grads
    if s.zero == ZeroOption.zero1:
        grads += 2 * P - 2 * P // N  # stage 1 partitions the optimizer only: full 16-bit gradients on every GPU
    return params, grads, optimizer


def reference_bytes(arch: Architecture, s: Setting) -> int:
    """The reference copy: only with reference=model; TRL shards it like the policy under ZeRO-3 (offloaded
    with zero3_offload) and keeps a full replica per GPU otherwise."""
    if s.reference != Reference.model:
        return 0
    if s.zero == ZeroOption.zero3_offload:
        return 0
    if ZERO_STAGE[s.zero] == 3:
        return s.weight_bytes * arch.num_parameters // s.gpus
    return s.weight_bytes * arch.num_parameters


def activation_bytes_per_token_layer(arch: Architecture, s: Setting) -> int:
    """What one decoder layer saves for the backward, per token (Llama/Qwen2/Mistral layout, sdpa):
      2 RMSNorms   each an fp32 copy of its input, the normalized value and the weighted output (activation dtype);
      attention    q after RoPE, k before and after RoPE, v, the attention output, and sdpa's fp32 logsumexp per head;
      MLP          gate, SiLU(gate), up, and their product (4 x intermediate)."""
    a, d = activation_dtype_bytes(s), arch.hidden_size
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    norm = 4 * d + 2 * a * d
    attention = a * (2 * q + 3 * kv) + 4 * arch.num_attention_heads
    return 2 * norm + attention + 4 * a * arch.intermediate_size


def activation_dtype_bytes(s: Setting) -> int:
    return s.weight_bytes


def activation_bytes(arch: Architecture, s: Setting) -> int:
    """Saved activations of the policy's forward over 2 x micro_batch sequences, plus the final norm and the
    LM head's input copy. With gradient checkpointing each layer keeps only its input; the backward rebuilds
    one layer at a time, after the LM head's backward has freed its buffers, so the rebuilt layer counts only
    where it exceeds the head's peak (the traced step peaks in the head's backward for every model here)."""
    tokens = s.sequences * s.max_length
    a, d = activation_dtype_bytes(s), arch.hidden_size
    per_layer = activation_bytes_per_token_layer(arch, s)
    head = (4 * d + 2 * a * d) + a * d  # final RMSNorm + the shifted hidden states the fused head reads
    if s.gradient_checkpointing:
        rebuilt_excess = max(0, tokens * per_layer - logits_bytes(arch, s))
        return tokens * (arch.num_hidden_layers * a * d + head) + rebuilt_excess
    return tokens * (arch.num_hidden_layers * per_layer + head)


def logits_bytes(arch: Architecture, s: Setting) -> int:
    """The fused LM head at its backward, its peak. Always: the tile buffer (compute dtype; allocated 32768
    entries wide even when the vocabulary is smaller), fp32 per-token statistics, the fp32 hidden-state
    gradient and the fp32 weight gradient (none when the head is frozen, under LoRA). Then either the torch
    fold's fp32 tile copies (inside the loop) or the weight gradient's cast to the weight dtype (after it),
    whichever is larger: the two never coexist."""
    N = s.sequences * (s.max_length - 1)  # next-token labels: one position fewer per sequence
    tokens_per_tile = min(N, HEAD_TOKENS_PER_TILE)
    a, d, V = activation_dtype_bytes(s), arch.hidden_size, arch.vocab_size
    trained_head = s.reference != Reference.lora
    fixed = a * tokens_per_tile * HEAD_VOCAB_PER_TILE + 4 * HEAD_STATS_PER_TOKEN * N + 4 * N * d
    fixed += 4 * V * d if trained_head else 0
    fold_copies = 0 if s.triton else TORCH_FOLD_TILE_COPIES * 4 * tokens_per_tile * min(V, HEAD_VOCAB_PER_TILE)
    cast = s.weight_bytes * V * d if trained_head and s.weight_bytes != 4 else 0
    return fixed + max(fold_copies, cast)


def buffer_bytes(arch: Architecture, s: Setting) -> int:
    """The CUDA context; DDP's gradient buckets (a second copy of the gradients) without DeepSpeed on several
    GPUs; ZeRO-1/2's double-buffered reduce bucket (hidden^2 with transformers' "auto") and allgather bucket;
    ZeRO-3's reduce and prefetch buckets (hidden^2 and 0.9 x hidden^2, "auto")."""
    total = CUDA_FIXED_BYTES if s.cuda else 0
    d2, stage = arch.hidden_size ** 2, ZERO_STAGE[s.zero]
    if stage == 0 and s.gpus > 1:
        trainable = s.lora_params * 4 if s.reference == Reference.lora else arch.num_parameters * s.weight_bytes
        total += trainable
    elif stage in (1, 2):
        total += 2 * (2 * d2) + 2 * ALLGATHER_BUCKET
    elif stage == 3:
        total += 2 * (d2 + int(0.9 * d2))
    return total


def host_bytes_per_node(arch: Architecture, s: Setting) -> int:
    """Host RAM per node that zero3_offload's offloaded states need (0 for the other options): DeepSpeed's own
    ZeRO-3 estimate with offload_param and offload_optimizer on cpu (zero_init; its 1.5 buffer factor), 18 bytes
    per parameter spread over the nodes (16-bit and fp32 params, fp32 gradients, Adam's two moments); a
    reference=model copy, sharded and offloaded like the policy, adds its weights; under LoRA the frozen base
    in the weight dtype, and the fp32 adapters with their states. The processes' own memory comes on top."""
    if s.zero != ZeroOption.zero3_offload:
        return 0
    if s.reference == Reference.lora:
        return int(1.5 * (s.weight_bytes * arch.num_parameters + 18 * s.lora_params) / s.nodes)
    cpu, _, _ = estimate_zero3_model_states_mem_needs(arch.num_parameters, arch.largest_layer_params, s.gpus_per_node,
                                                      s.nodes, cpu_offload=True, cpu_offload_params=True)
    reference = s.weight_bytes * arch.num_parameters // s.nodes if s.reference == Reference.model else 0
    return cpu + reference


def eval_bytes(arch: Architecture, weight_bytes: int, batch_size: int, tokens: int, new_tokens: int) -> int:
    """Evaluation after DPO (train/pipeline/evaluate.py), per GPU: one whole model at a time (policy, then
    reference) in the model dtype; generate()'s KV cache for `batch_size` prompts of up to `tokens` tokens; the
    completions' fp32 logits and log-softmax when scoring ([batch, new_tokens + 1, vocab] each, logits_to_keep);
    the CUDA context. ZeRO does not shard it: every rank samples its share of the prompts with a whole model."""
    weights = weight_bytes * arch.num_parameters
    kv_per_token = 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * weight_bytes
    kv_cache = kv_per_token * batch_size * tokens
    logits = 2 * 4 * batch_size * (new_tokens + 1) * arch.vocab_size
    return weights + kv_cache + logits + CUDA_FIXED_BYTES
