"""Text data: a word-level tokenizer and token-sequence datasets, held as the image sets are (``data.ImageSet``), so
the harness, store, gate and report serve them through the same contracts.

A text set's ``images`` are token ids (N x n, int64) and its ``shape`` is ``(n, V)``: sequences of n tokens from a
vocabulary of V (the one-hot shape of a sequence). Models embed the ids themselves; an attacker that optimizes in
embedding space hands a model float word embeddings (N x n x d) instead of ids (``giabench.text_models``).

``austen`` (the embedded text set): sentences of Jane Austen's six novels (public domain), taken from Debian's
``r-cran-janeaustenr`` 1.0.0-1 (janeaustenr by Julia Silge, MIT licence) by ``tools/build_austen_corpus.py`` into
``giabench/corpora/austen.tsv.gz``: the first 2,000 sentences of at least 4 words of each novel. A sentence's label is
its novel (six classes: authorship attribution by novel). Every tenth sentence of a novel (index 0, 10, 20 ...) is in
the ``test`` split, from which clients' private batches are drawn; the rest is ``train``, on which the tokenizer's
vocabulary is counted and models of state ``trained:N`` are trained (never on the clients' sentences). A sequence is
the first n tokens of a sentence that has at least n: fixed-length inputs, as a model truncates to its maximum length,
with no padding.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from giabench import checks, data
from giabench.errors import ConfigError
from giabench.registry import dataset

CORPUS = Path(__file__).parent / "corpora" / "austen.tsv.gz"
CORPUS_SOURCE = "Debian r-cran-janeaustenr 1.0.0-1 (MIT; Jane Austen's novels, public domain)"
UNKNOWN = "<unk>"
TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|[0-9]+|-+|[^\sa-z0-9]")
TEST_EVERY = 10


@dataclass(frozen=True)
class Tokenizer:
    """Lower-cased words (with inner apostrophes), numbers, dash runs and single punctuation marks; id 0 is
    ``<unk>``, ids 1.. the most frequent tokens of the text it was built from (ties alphabetical)."""

    vocabulary: tuple[str, ...]

    @classmethod
    def build(cls, texts: list[str], size: int) -> Tokenizer:
        counts = Counter(t for text in texts for t in TOKEN.findall(text.lower()))
        ranked = sorted(counts, key=lambda t: (-counts[t], t))[:size - 1]
        return cls((UNKNOWN, *ranked))

    @cached_property
    def ids(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.vocabulary)}

    def encode(self, text: str) -> list[int]:
        ids = self.ids
        return [ids.get(t, 0) for t in TOKEN.findall(text.lower())]

    def decode(self, ids) -> str:
        """Tokens joined by spaces (the text ROUGE scores; its tokenization drops the punctuation)."""
        return " ".join(self.vocabulary[int(i)] for i in ids)


@dataclass
class TextSet(data.ImageSet):
    """Token sequences (``images``: N x n int64 ids) with labels and the tokenizer that made them."""

    tokenizer: Tokenizer = field(default=None)
    #: the set a model of state ``trained:N`` trains on (``giabench.models``): the corpus's training split
    training_split: Callable[[], TextSet] | None = field(default=None, repr=False)
    modality = "text"

    def training(self) -> TextSet:
        return self.training_split() if self.training_split else self

    @property
    def shape(self) -> tuple[int, int]:
        return (self.images.shape[1], len(self.tokenizer.vocabulary))

    def texts(self, ids: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row) for row in ids]


def read_corpus(path: Path = CORPUS) -> list[tuple[str, str]]:
    """``(novel, sentence)`` pairs of the embedded corpus."""
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
    except (OSError, EOFError) as exc:
        raise ConfigError(f"{path}: cannot read the text corpus ({exc}); reinstall giabench") from None
    pairs = [tuple(line.split("\t", 1)) for line in lines if "\t" in line]
    if len(pairs) != len(lines):
        raise ConfigError(f"{path}: expected novel<TAB>sentence lines")
    return pairs


def sequences(tokenizer: Tokenizer, texts: list[str], length: int) -> tuple[torch.Tensor, list[int]]:
    """The first ``length`` token ids of each text that has at least that many, and which texts they came from."""
    kept, rows = [], []
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)
        if len(ids) >= length:
            kept.append(i)
            rows.append(ids[:length])
    return torch.tensor(rows, dtype=torch.long).view(len(rows), length), kept


@dataset("austen")
def austen(*, split: str = "test", length: int = 12, vocabulary: int = 4096) -> TextSet:
    """Sentences of Jane Austen's six novels, labelled by novel (see the module docstring)."""
    checks.one_of("dataset austen", "split", split, ("test", "train"))
    checks.require("dataset austen", "length", length, 2 <= length <= 64, "between 2 and 64 tokens")
    checks.require("dataset austen", "vocabulary", vocabulary, 16 <= vocabulary <= 10_000, "between 16 and 10000")
    pairs = read_corpus()
    novels = sorted({novel for novel, _ in pairs}, key=[n for n, _ in pairs].index)
    position = Counter()
    chosen, train_texts = [], []
    for novel, sentence in pairs:
        test = position[novel] % TEST_EVERY == 0
        position[novel] += 1
        if not test:
            train_texts.append(sentence)
        if test == (split == "test"):
            chosen.append((novels.index(novel), sentence))
    tokenizer = Tokenizer.build(train_texts, vocabulary)
    ids, kept = sequences(tokenizer, [s for _, s in chosen], length)
    labels = torch.tensor([chosen[i][0] for i in kept], dtype=torch.long)
    training = None if split == "train" else (lambda: data.load("austen", split="train", length=length,
                                                                   vocabulary=vocabulary))
    return TextSet(f"austen-{split}", ids, labels, novels, (), (), source=CORPUS_SOURCE, tokenizer=tokenizer,
                   training_split=training)
