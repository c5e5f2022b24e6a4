"""Small transformers for text classification, written with torch.nn as BERT and GPT-2 are built, a few layers deep.

Both take a batch of token ids (B x n, int64) or of word embeddings (B x n x d, float: what an attacker optimizing in
embedding space feeds them; the model adds the position embeddings itself, as Hugging Face's ``inputs_embeds``) and
return class logits (B x C). Attention is written out (softmax(q k^T / sqrt(d_h)) v per head), so per-sample gradients
and attackers can ``torch.func.vmap`` through it. Dropout is left out: the papers' attacks run the model in eval mode.

- ``bert`` (Devlin et al., NAACL 2019): h_0 = LN(E[t] + P[i]); post-LN blocks h <- LN(h + Attn(h)),
  h <- LN(h + FFN(h)), FFN = W_2 GELU(W_1 h); the pooler tanh(W_p h_0 + b_p) on the first position, then a linear
  classifier (``BertForSequenceClassification``). The inputs carry no [CLS]/[SEP] tokens and no token-type embedding:
  the first token's state is pooled.
- ``gpt2`` (Radford et al., 2019): h_0 = E[t] + P[i]; pre-LN causal blocks h <- h + Attn(LN_1(h)),
  h <- h + FFN(LN_2(h)) with tanh-approximated GELU, a final LN, and a bias-free linear head on the last position
  (``GPT2ForSequenceClassification``).

``lora: r`` (r > 0) adds LoRA adapters of rank r to every block's query and value projections, q = W_q h + B A h, and
freezes every other weight: a protocol then trains and shares the adapters only (``Protocol.params`` holds the
trainable parameters).

Initialization is the one both papers' code applies (Hugging Face ``_init_weights``): every linear and embedding weight
N(0, 0.02^2), biases 0, layer norms 1 and 0; GPT-2 scales the residual output projections to N(0, (0.02 / sqrt(2L))^2).
``query_inputs`` gives the input of each block's attention projections (DAGER's span check), ``attention_weights``
their names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from giabench import checks
from giabench.registry import model

INIT_STD = 0.02


class LowRank(nn.Module):
    """A LoRA adapter (Hu et al., ICLR 2022): h -> B A h, A (r x d) and B (d x r); A Kaiming-uniform, B zero (peft's
    initialization), so the adapted layer starts as the pretrained one."""

    def __init__(self, width: int, rank: int):
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, h):
        return self.up(self.down(h))


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool, lora: int = 0):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.output = nn.Linear(width, width)
        self.adapters = nn.ModuleDict({"query": LowRank(width, lora), "value": LowRank(width, lora)}) if lora else None

    def project(self, name: str, h: torch.Tensor) -> torch.Tensor:
        out = getattr(self, name)(h)
        return out + self.adapters[name](h) if self.adapters is not None and name in self.adapters else out

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, n, width = h.shape
        split = (batch, n, self.heads, width // self.heads)
        q, k, v = (self.project(f, h).view(split).transpose(1, 2) for f in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // self.heads)
        if self.causal:
            future = torch.ones(n, n, dtype=torch.bool, device=h.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, n, width)
        return self.output(mixed)


class FeedForward(nn.Module):
    def __init__(self, width: int, approximate: str):
        super().__init__()
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.approximate = approximate

    def forward(self, h):
        return self.down(F.gelu(self.up(h), approximate=self.approximate))


class Block(nn.Module):
    """One transformer block; ``pre_norm``: GPT-2's order (norm, then sublayer), else BERT's (sublayer, then norm)."""

    def __init__(self, width: int, heads: int, pre_norm: bool, lora: int = 0):
        super().__init__()
        self.pre_norm = pre_norm
        self.attention = SelfAttention(width, heads, causal=pre_norm, lora=lora)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = FeedForward(width, "tanh" if pre_norm else "none")

    def query_input(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm1(h) if self.pre_norm else h

    def forward(self, h):
        if self.pre_norm:
            h = h + self.attention(self.norm1(h))
            return h + self.mlp(self.norm2(h))
        h = self.norm1(h + self.attention(h))
        return self.norm2(h + self.mlp(h))


class TextTransformer(nn.Module):
    """Token and position embeddings, ``layers`` blocks, a classification head (see the module docstring)."""

    pre_norm = False
    modalities = ("text",)

    @property
    def causal(self) -> bool:
        """Causal attention (the decoder): block 2's input at position i depends on the prefix only."""
        return self.pre_norm

    def __init__(self, shape, num_classes, *, width: int, heads: int, layers: int, lora: int):
        super().__init__()
        where = f"model {type(self).__name__.lower()}"
        checks.require(where, "shape", shape, len(shape) == 2, "(sequence length, vocabulary): a text dataset")
        checks.at_least(where, 1, width=width, heads=heads, layers=layers)
        checks.at_least(where, 0, lora=lora)
        checks.require(where, "heads", heads, width % heads == 0, f"a divisor of width {width}")
        length, vocabulary = shape
        self.lora = lora
        self.token_embedding = nn.Embedding(vocabulary, width)
        self.position_embedding = nn.Embedding(length, width)
        self.blocks = nn.ModuleList(Block(width, heads, self.pre_norm, lora) for _ in range(layers))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Word rows plus positions: ``x`` is token ids (B x n) or word embeddings (B x n x d)."""
        words = self.token_embedding(x) if not x.dtype.is_floating_point else x
        return words + self.position_embedding.weight[:words.shape[1]]

    def query_inputs(self, x: torch.Tensor, layers: int) -> list[torch.Tensor]:
        """The inputs (B x n x d) of the query projections of the first ``layers`` blocks."""
        h, found = self.start(self.embed(x)), []
        for block in self.blocks[:layers]:
            found.append(block.query_input(h))
            h = block(h)
        return found

    def first_query_inputs(self, position: int) -> torch.Tensor:
        """The first block's query input for every vocabulary token at ``position`` (V x d): it depends on the token
        and its position only."""
        h = self.start(self.token_embedding.weight + self.position_embedding.weight[position])
        return self.blocks[0].query_input(h)

    def attention_weights(self, layer: int) -> tuple[str, ...]:
        """The names of the weights that multiply block ``layer``'s query input and are trained: its query, key and
        value weights, or with LoRA its adapters' down-projections."""
        if self.lora:
            return tuple(f"blocks.{layer}.attention.adapters.{p}.down.weight" for p in ("query", "value"))
        return tuple(f"blocks.{layer}.attention.{p}.weight" for p in ("query", "key", "value"))

    def input_rows(self, name: str, gradient: torch.Tensor) -> torch.Tensor:
        """The gradient of weight ``name`` with one row per output unit (out x in): torch.nn's layout already."""
        return gradient

    def _freeze_for_lora(self):
        """With LoRA only the adapters train (and are shared): every other weight is frozen."""
        if self.lora:
            for name, p in self.named_parameters():
                p.requires_grad_(".adapters." in name)

    def start(self, h):
        return h

    def _initialize(self, layers: int):
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if ".norm" in name or name.startswith("norm") else nn.init.zeros_(p)
            elif ".adapters." not in name:
                scaled = self.pre_norm and name.endswith(("attention.output.weight", "mlp.down.weight"))
                nn.init.normal_(p, std=INIT_STD / math.sqrt(2 * layers) if scaled else INIT_STD)
        self._freeze_for_lora()


@model("bert")
class Bert(TextTransformer):
    """A BERT-like encoder classifier; BERT-base's width and heads (768, 12), ``layers`` of its 12."""

    def __init__(self, shape, num_classes, *, width: int = 768, heads: int = 12, layers: int = 2, lora: int = 0):
        super().__init__(shape, num_classes, width=width, heads=heads, layers=layers, lora=lora)
        self.norm = nn.LayerNorm(width)
        self.pooler = nn.Linear(width, width)
        self.classifier = nn.Linear(width, num_classes)
        self._initialize(layers)

    def start(self, h):
        return self.norm(h)

    def forward(self, x):
        h = self.start(self.embed(x))
        for block in self.blocks:
            h = block(h)
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))


@model("gpt2")
class Gpt2(TextTransformer):
    """A GPT-2-like decoder classifier; GPT-2 small's width and heads (768, 12), ``layers`` of its 12."""

    pre_norm = True

    def __init__(self, shape, num_classes, *, width: int = 768, heads: int = 12, layers: int = 2, lora: int = 0):
        super().__init__(shape, num_classes, width=width, heads=heads, layers=layers, lora=lora)
        self.norm = nn.LayerNorm(width)
        self.score = nn.Linear(width, num_classes, bias=False)
        self._initialize(layers)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.score(self.norm(h)[:, -1])

    def last_second_query_input(self, sequences: torch.Tensor) -> torch.Tensor:
        """Block 2's query input at the last position of each sequence (N x d), block 1 run for that position only.
        Block 1's input at position i is LN_1(E[t_i] + P[i]), so its keys and values there depend on (t_i, i) alone:
        they are computed once per distinct pair and gathered; the last position's query attends to them, and its
        residual stream goes through block 1's output projection and FFN. Equal to ``query_inputs(x, 2)[1][:, -1]``
        at about 1/n of its cost (DAGER's prefix search)."""
        count, n = sequences.shape
        block, vocabulary = self.blocks[0], self.token_embedding.num_embeddings
        pairs, where = torch.unique(sequences + vocabulary * torch.arange(n, device=sequences.device),
                                    return_inverse=True)
        start = self.token_embedding(pairs % vocabulary) + self.position_embedding(pairs // vocabulary)
        attention, width = block.attention, start.shape[-1]
        z = block.norm1(start)
        heads = (attention.heads, width // attention.heads)
        keys, values = (attention.project(name, z)[where].view(count, n, *heads).transpose(1, 2)
                        for name in ("key", "value"))
        last = start[where[:, -1]]
        query = attention.project("query", z[where[:, -1]]).view(count, *heads)[:, :, None]
        mixed = ((query @ keys.transpose(-1, -2)) / math.sqrt(heads[1])).softmax(-1) @ values
        h = last + attention.output(mixed.reshape(count, width))
        h = h + block.mlp(block.norm2(h))
        return self.blocks[1].query_input(h)
