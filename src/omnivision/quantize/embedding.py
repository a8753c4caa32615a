"""`QuantizedEmbedding`: a tied token embedding that is also the output head, stored int8 (per row or in groups) or int4.

Qwen2.5-0.5B ties its 151936 x 896 embedding to the output head: 28 % of the language model's
weights, read in full for every generated token. Quantized, one table serves both uses: the head
is the quantized layer's product (`project`), and a lookup dequantizes just the rows asked for.
"""

from __future__ import annotations

import torch
from torch import nn

from omnivision.quantize.int4_linear import Int4Linear
from omnivision.quantize.int8_group_linear import Int8GroupLinear
from omnivision.quantize.int8_linear import Int8Linear


class QuantizedEmbedding(nn.Module):
    def __init__(self, table: Int8Linear | Int8GroupLinear | Int4Linear) -> None:
        super().__init__()
        self.table = table  # [vocab, dim] as a quantized Linear: dim -> vocab

    @property
    def num_embeddings(self) -> int:
        return self.table.out_features

    @property
    def embedding_dim(self) -> int:
        return self.table.in_features

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids [...] -> fp32 [..., dim]; the decoder casts to its compute dtype
        return self.table.rows(input_ids, torch.float32)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """The tied output head: hidden [..., dim] -> logits [..., vocab]."""
        return self.table(hidden)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"
