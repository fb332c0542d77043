"""OriginalMemory: an original's cross-attention keys/values computed once and shared by all its generations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


# Why the original's half of the memory can be precomputed: the text encoder only sees the memory through
# each layer's cross-attention keys K_l = memory @ Wk_l + bk_l and values V_l = memory @ Wv_l + bv_l, which
# act on every memory token on its own. So for memory = [generated ; original] (tokens concatenated),
#     K_l(memory) = [K_l(generated) ; K_l(original)]   (and the same for V_l),
# and K_l(original), V_l(original) depend on the original alone: one original scored against G generations
# needs them once, not G times (at BLIP-base shapes: 12 layers x 2 projections of 577 tokens per pair).
# The memory's attention mask is all ones, so the attention of query q is, with s_x = q K_l(x)^T / sqrt(d),
#     softmax([s_gen , s_orig]) = [P_gen , P_orig],   context = P_gen V_l(gen) + P_orig V_l(orig),
# which `memory_cross_attention` computes from the two halves without concatenating keys/values, and with
# each original's keys/values shared by all items scored against it, not copied per item (on a CPU those
# copies cost as much as the projection they save; BLIP's own cache path, which needs one concatenated
# per-item tensor per layer, measured slower than no caching at all).
@dataclass(frozen=True)
class OriginalMemory:
    """The originals' half of the cross-attention memory for a batch of items (see the comment above).

    Holds U distinct originals and, per item, which of them it is scored against. Made by
    `HFPCRewardModel.encode_original` (one item per original; `select` / `cat` repeat and combine them
    without copying per item); accepted by `score_from_tokens` / `fused_features` in place of the
    originals' vision tokens. Memory: 2 x layers x N x Dt numbers per original (BLIP-base at 384 px: ~42 MB
    in float32).
    """

    keys: tuple[torch.Tensor, ...]  # per text layer: (U, heads, N, head_dim) keys of tokens + segment[1]
    values: tuple[torch.Tensor, ...]  # per text layer: (U, heads, N, head_dim) values, same layout
    rows: tuple[int, ...]  # per item, the index (< U) of the original it is scored against

    def __post_init__(self):
        stored = self.keys[0].shape[0]
        if any(not 0 <= row < stored for row in self.rows):
            raise ValueError(f"OriginalMemory rows must index its {stored} originals, got {self.rows}")

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, items: Sequence[int]) -> OriginalMemory:
        """The memory of the given items, in order (repeats allowed), sharing this one's tensors."""
        return OriginalMemory(self.keys, self.values, tuple(self.rows[i] for i in items))

    def split(self) -> list[OriginalMemory]:
        """One single-item memory per item, each its own copy (so each can be cached and freed on its own)."""
        return [
            OriginalMemory(
                tuple(k[row : row + 1].clone() for k in self.keys),
                tuple(v[row : row + 1].clone() for v in self.values),
                (0,),
            )
            for row in self.rows
        ]

    @classmethod
    def cat(cls, memories: Sequence[OriginalMemory]) -> OriginalMemory:
        """The items of several memories as one, in order; a memory passed more than once (the same object,
        e.g. from a cache) is stored once."""
        distinct = list({id(m): m for m in memories}.values())
        offsets, start = {}, 0
        for memory in distinct:
            offsets[id(memory)] = start
            start += memory.keys[0].shape[0]
        return cls(
            tuple(torch.cat(layer) for layer in zip(*(m.keys for m in distinct))),
            tuple(torch.cat(layer) for layer in zip(*(m.values for m in distinct))),
            tuple(offsets[id(m)] + row for m in memories for row in m.rows),
        )

    def groups(self, device: torch.device) -> list[tuple[int, torch.Tensor]]:
        """(stored original, indices of its items) for each original used by some item."""
        items: dict[int, list[int]] = {}
        for item, row in enumerate(self.rows):
            items.setdefault(row, []).append(item)
        return [(row, torch.tensor(indices, device=device)) for row, indices in items.items()]


def keys_values(attention: nn.Module, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention (keys, values), each (B, heads, N, head_dim), of memory tokens (B, N, Dv), shaped as
    BlipTextSelfAttention shapes them."""
    shape = (*memory.shape[:-1], -1, attention.attention_head_size)
    return (
        attention.key(memory).view(shape).transpose(1, 2),
        attention.value(memory).view(shape).transpose(1, 2),
    )


def memory_cross_attention(
    attention: nn.Module,
    hidden: torch.Tensor,
    generated_memory: torch.Tensor,
    orig_keys: torch.Tensor,
    orig_values: torch.Tensor,
    groups: list[tuple[int, torch.Tensor]],
) -> torch.Tensor:
    """BlipTextSelfAttention's cross-attention context (B, L, Dt) of `hidden` (B, L, Dt) over the memory
    [generated ; original] with all-ones mask, from the generated tokens (B, N, Dv) and the originals'
    precomputed keys/values (U, heads, N, head_dim), `groups` mapping originals to items (see the comment
    above OriginalMemory)."""
    batch, length = hidden.shape[:2]
    head_size = attention.attention_head_size
    query = attention.query(hidden).view(batch, length, -1, head_size).transpose(1, 2)
    gen_keys, gen_values = keys_values(attention, generated_memory)
    orig_scores = query.new_empty(*query.shape[:3], orig_keys.shape[2])
    for stored, items in groups:
        orig_scores[items] = shared_matmul(query[items], orig_keys[stored].transpose(-1, -2))
    scores = torch.cat([query @ gen_keys.transpose(-1, -2), orig_scores], dim=-1)
    probs = attention.dropout(torch.softmax(scores / math.sqrt(head_size), dim=-1))
    split = gen_keys.shape[2]
    context = probs[..., :split] @ gen_values
    for stored, items in groups:
        context[items] += shared_matmul(probs[items, ..., split:], orig_values[stored])
    return context.transpose(1, 2).reshape(batch, length, -1)


def shared_matmul(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(b, heads, L, X) @ (heads, X, Y) -> (b, heads, L, Y): one right-hand side for all b items, folded into
    the rows instead of broadcast (broadcasting would copy it b times)."""
    items, heads, length, inner = left.shape
    folded = left.transpose(0, 1).reshape(heads, items * length, inner)
    return (folded @ right).view(heads, items, length, -1).transpose(0, 1)
