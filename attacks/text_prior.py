"""A language-model prior for text attacks: a small causal transformer trained on the attacker's text.

LAMP scores its discrete moves by the perplexity of an auxiliary language model sharing the victim's tokenizer (the
paper's: a GPT-2-architecture model trained on WikiText-103 with BERT's vocabulary). Ours is trained on the sequences
the attacker holds, the surrogate data of threat model D (``ServerView.surrogate``: sequences of the client's
distribution, the client's own batch set aside): width 128, 2 blocks of ``giabench.text_models`` (GPT-2's pre-LN causal
blocks), a head tied to the token embedding, ``STEPS`` Adam steps (lr 1e-3) on random batches of 64 minimizing the mean
next-token cross-entropy, stopped early (trained on the austen test split's ~880 sequences and measured on 500
training ones). Seeded, and kept per process for the same sequences.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from giabench.text_models import INIT_STD, Block

STEPS = 100  # held-out next-token loss 5.39 nats (untrained 8.33); 6.42 after 400 steps, 7.88 after 800: it overfits
WIDTH, HEADS, LAYERS = 128, 2, 2
_TRAINED: dict[str, CausalLM] = {}


class CausalLM(nn.Module):
    def __init__(self, length: int, vocabulary: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocabulary, WIDTH)
        self.position_embedding = nn.Embedding(length, WIDTH)
        self.blocks = nn.ModuleList(Block(WIDTH, HEADS, pre_norm=True) for _ in range(LAYERS))
        self.norm = nn.LayerNorm(WIDTH)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=INIT_STD)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B x n x V)."""
        h = self.token_embedding(ids) + self.position_embedding.weight[:ids.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.norm(h) @ self.token_embedding.weight.T

    def perplexity_loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of each sequence (B), log-perplexity."""
        logits = self(ids)[:, :-1]
        return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").mean(dim=1)


def language_model(sequences: torch.Tensor, vocabulary: int, seed: int = 0) -> CausalLM:
    """The prior trained on ``sequences`` (N x n token ids), in eval mode."""
    key = hashlib.sha256(sequences.cpu().numpy().tobytes() + f"{vocabulary},{seed}".encode()).hexdigest()
    if key not in _TRAINED:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lm = CausalLM(sequences.shape[1], vocabulary)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(lm.parameters(), lr=1e-3)
        data = sequences.cpu()
        for _ in range(STEPS):
            batch = data[torch.randint(len(data), (min(64, len(data)),), generator=generator)]
            optimizer.zero_grad()
            lm.perplexity_loss(batch).mean().backward()
            optimizer.step()
        _TRAINED[key] = lm.eval().requires_grad_(False)
    return _TRAINED[key]
