"""The hf engine's running batch: one left-padded KV cache for all rows being decoded.

Invariants: every row's attention mask is zeros then ones (left padding only); the batch is as
wide as its longest live row (all-zero left columns are trimmed whenever rows leave); a new row
is padded to the batch's width and appended, and only a row longer than the batch widens the
rows already there. Each row keeps its own next position, so padding never shifts positions and
a row's logits do not depend on its batch mates.
"""

from __future__ import annotations

from typing import Any

Layers = list[tuple[Any, Any]]  # per layer: key, value tensors [rows, heads, seq, head_dim]


class DecodeBatch:
    def __init__(self, device: str) -> None:
        self.device = device
        self.rows: list[Any] = []
        self.cache = None  # transformers DynamicCache
        self.mask = None  # [rows, width] long
        self.positions = None  # [rows] long: position of each row's next token
        self.logits = None  # [rows, vocab] float: each row's next-token logits

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def admit(self, joined: list[tuple[Any, Layers, Any, int]]) -> None:
        """Append rows given as (row, its prompt's KV layers, its last logits, its prompt length)."""
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        width = max(self.width, *(n for *_, n in joined))
        if self.cache is not None and width > self.width:
            grow = width - self.width
            for layer in self.cache.layers:
                layer.keys = F.pad(layer.keys, (0, 0, grow, 0))
                layer.values = F.pad(layer.values, (0, 0, grow, 0))
            self.mask = F.pad(self.mask, (grow, 0))
        new_layers = [
            tuple(torch.cat([F.pad(kv[i][j], (0, 0, width - kv[i][j].shape[2], 0)) for _, kv, _, _ in joined])
                  for j in (0, 1))
            for i in range(len(joined[0][1]))
        ]
        new_mask = torch.zeros((len(joined), width), dtype=torch.long, device=self.device)
        for i, (*_, n) in enumerate(joined):
            new_mask[i, width - n:] = 1
        new_positions = torch.tensor([n for *_, n in joined], device=self.device)
        new_logits = torch.stack([last for _, _, last, _ in joined])
        if self.cache is None:
            self.cache = DynamicCache(ddp_cache_data=new_layers)
            self.mask, self.positions, self.logits = new_mask, new_positions, new_logits
        else:
            for layer, (k, v) in zip(self.cache.layers, new_layers):
                layer.keys = torch.cat([layer.keys, k])
                layer.values = torch.cat([layer.values, v])
            self.mask = torch.cat([self.mask, new_mask])
            self.positions = torch.cat([self.positions, new_positions])
            self.logits = torch.cat([self.logits, new_logits])
        self.rows += [row for row, *_ in joined]

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows (in this order), then trim the padding no live row needs."""
        import torch

        if len(indices) == len(self.rows):
            return
        if not indices:
            self.__init__(self.device)
            return
        index = torch.tensor(indices, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions, self.logits = self.mask[index], self.positions[index], self.logits[index]
        self.rows = [self.rows[i] for i in indices]
        first = int(self.mask.any(dim=0).int().argmax())  # first column some live row attends to
        if first > 0:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]

    def step(self, model, next_ids: list[int]) -> None:
        """Feed each row its next token; afterwards `logits` holds the following token's logits."""
        import torch

        ids = torch.tensor(next_ids, dtype=torch.long, device=self.device).unsqueeze(1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        out = model(input_ids=ids, attention_mask=self.mask, position_ids=self.positions.unsqueeze(1),
                    cache=self.cache, use_cache=True, logits_to_keep=1)
        self.positions = self.positions + 1
        self.logits = out.logits[:, -1, :].float()
