"""Hugging Face models and text datasets through the optional ``hf`` extra (``pip install 'giabench[hf]'``).

``model: {name: hf, checkpoint: ...}`` wraps a GPT-2 or BERT sequence classifier (``GPT2ForSequenceClassification``,
``BertForSequenceClassification``), from the Hub or a local directory written by ``save_pretrained``, in the interface
giabench's text attacks use (``giabench.text_models``): token ids or word embeddings in, logits out; the query inputs
of the attention blocks; the input-major rows of their weight gradients. ``dataset: {name: hf, path: ...}`` reads a
Hub dataset (or a local directory of ``train.csv`` / ``test.csv`` ...) through ``datasets.load_dataset`` and tokenizes
it with a Hub tokenizer into a ``TextSet``.

Built as the DAGER and LAMP code builds its victims: the checkpoint's weights, the classification head freshly drawn by
Hugging Face's ``_init_weights`` (seeded by the cell's seed), in the cell's dtype (float32 unless ``--dtype``), eager
attention. Two deviations, recorded in the
model's parameters: dropout is 0 (the attacks run the model deterministically, as ``eval()``), and sequences carry no
special tokens (BERT's [CLS]/[SEP] are not added; the first token's state is pooled), as the embedded text sets.
``pretrained: false`` draws every weight with ``_init_weights`` instead (the checkpoint's architecture, untrained).

Loading needs the network unless ``checkpoint``, ``tokenizer`` and ``path`` name local directories (tests use small
ones written by ``save_pretrained``); set ``HF_HUB_OFFLINE=1`` to make a missing local file an error rather than a
download.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from giabench import checks, data
from giabench.errors import ConfigError
from giabench.registry import dataset, model
from giabench.text import TextSet

ARCHITECTURES = ("gpt2", "bert")
NO_DROPOUT = {"gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"),
              "bert": ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")}


def _require(module: str, where: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{where} needs the optional extra: pip install 'giabench[hf]' ({module} is not "
                          "installed)") from None


def _loading(where: str, what: str, call):
    """``call()``, with a failure to find or read ``what`` reported as a ConfigError naming it."""
    try:
        return call()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: cannot load {what} ({type(exc).__name__}: {first})") from None


class _Enough(Exception):
    """Stops a forward pass once the hooks have seen the blocks asked for."""


@model("hf")
class HubTransformer(nn.Module):
    """A Hugging Face GPT-2 or BERT sequence classifier (see the module docstring): ``checkpoint`` a Hub id or a local
    directory; ``pretrained: false`` the same architecture drawn by ``_init_weights``."""

    modalities = ("text",)

    def __init__(self, shape, num_classes, *, checkpoint: str, pretrained: bool = True):
        super().__init__()
        where = "model hf"
        checks.require(where, "shape", shape, len(shape) == 2, "(sequence length, vocabulary): a text dataset")
        transformers = _require("transformers", where)
        config = _loading(where, f"the config of {checkpoint!r}", lambda: transformers.AutoConfig.from_pretrained(
            checkpoint, num_labels=num_classes))
        checks.one_of(where, "checkpoint's model_type", config.model_type, ARCHITECTURES)
        for name in NO_DROPOUT[config.model_type]:
            setattr(config, name, 0.0)
        length, vocabulary = shape
        checks.require(where, "checkpoint", checkpoint, vocabulary <= config.vocab_size,
                       f"a model whose {config.vocab_size} embedding rows cover the tokenizer's {vocabulary} tokens")
        checks.require(where, "checkpoint", checkpoint, length <= config.max_position_embeddings,
                       f"a model of at least {length} positions (it has {config.max_position_embeddings})")
        options = {"config": config, "attn_implementation": "eager", "dtype": torch.get_default_dtype()}
        auto = transformers.AutoModelForSequenceClassification
        self.hf = _loading(where, f"the weights of {checkpoint!r}", lambda: auto.from_pretrained(
            checkpoint, **options)) if pretrained else auto.from_config(**options)
        self.causal = config.model_type == "gpt2"

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.hf.get_input_embeddings()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.hf.transformer.h if self.causal else self.hf.bert.encoder.layer

    def _query_projection(self, layer: int) -> nn.Module:
        """The module whose input is block ``layer``'s query input: GPT-2's fused c_attn, BERT's query."""
        block = self.blocks[layer]
        return block.attn.c_attn if self.causal else block.attention.self.query

    def attention_weights(self, layer: int) -> tuple[str, ...]:
        """The names of block ``layer``'s query, key and value weights (GPT-2's are fused in c_attn)."""
        if self.causal:
            return (f"hf.transformer.h.{layer}.attn.c_attn.weight",)
        return tuple(f"hf.bert.encoder.layer.{layer}.attention.self.{p}.weight" for p in ("query", "key", "value"))

    def input_rows(self, name: str, gradient: torch.Tensor) -> torch.Tensor:
        """The gradient with one row per output unit (out x in): GPT-2's Conv1D stores its weight in x out."""
        return gradient.T if self.causal else gradient

    def _run(self, words: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.causal:
            states = self.hf.transformer(inputs_embeds=words, position_ids=position_ids).last_hidden_state
            return self.hf.score(states[:, -1])
        return self.hf(inputs_embeds=words, position_ids=position_ids).logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of token ids (B x n) or word embeddings (B x n x d); GPT-2 reads the last position (no padding)."""
        return self._run(self.token_embedding(x) if not x.dtype.is_floating_point else x)

    def _query_inputs(self, words: torch.Tensor, layers: int, position_ids=None) -> list[torch.Tensor]:
        found = []

        def grab(module, args):
            found.append(args[0])
            if len(found) == layers:
                raise _Enough

        hooks = [self._query_projection(i).register_forward_pre_hook(grab) for i in range(layers)]
        try:
            self._run(words, position_ids)
        except _Enough:
            pass
        finally:
            for hook in hooks:
                hook.remove()
        return found

    def query_inputs(self, x: torch.Tensor, layers: int) -> list[torch.Tensor]:
        """The inputs (B x n x d) of the query projections of the first ``layers`` blocks."""
        return self._query_inputs(self.token_embedding(x) if not x.dtype.is_floating_point else x, layers)

    def first_query_inputs(self, position: int) -> torch.Tensor:
        """Block 1's query input for every vocabulary token at ``position`` (V x d): each token a one-token
        sequence placed at ``position``."""
        table = self.token_embedding.weight
        where = torch.full((len(table), 1), position, dtype=torch.long, device=table.device)
        return self._query_inputs(table[:, None], 1, where)[0][:, 0]


@dataclass(frozen=True)
class HubTokenizer:
    """A Hugging Face tokenizer in the interface of ``giabench.text.Tokenizer`` (``vocabulary``, ``decode``)."""

    tokenizer: object

    @cached_property
    def vocabulary(self) -> tuple[str, ...]:
        return tuple(self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer)))))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])


def _split(where: str, path: str, config: str, split: str):
    datasets = _require("datasets", where)
    return _loading(where, f"split {split!r} of {path!r}", lambda: datasets.load_dataset(
        path, config or None, split=split))


@dataset("hf")
def hub_text(*, path: str, tokenizer: str, split: str = "test", train_split: str = "train", config: str = "",
             text: str = "text", label: str = "label", length: int = 12) -> TextSet:
    """A Hugging Face text dataset (Hub id or local directory) tokenized by ``tokenizer`` (Hub id or local directory):
    the first ``length`` tokens of each text of ``split`` with at least that many; ``train_split`` is what models of
    state ``trained:N`` train on and the tokenizer's classes are counted over (with ``split``)."""
    where = "dataset hf"
    checks.require(where, "length", length, 2 <= length <= 512, "between 2 and 512 tokens")
    rows = _split(where, path, config, split)
    for field, column in (("text", text), ("label", label)):
        checks.one_of(where, field, column, tuple(rows.column_names))
    feature = rows.features[label]
    if hasattr(feature, "names"):  # a ClassLabel column: its names, in order
        classes = list(feature.names)
    else:  # the values of both splits, sorted, so that a split and its training split agree
        training_rows = rows if split == train_split else _split(where, path, config, train_split)
        classes = [str(v) for v in sorted(set(rows[label]) | set(training_rows[label]))]
    transformers = _require("transformers", where)
    hub = HubTokenizer(_loading(where, f"tokenizer {tokenizer!r}",
                                lambda: transformers.AutoTokenizer.from_pretrained(tokenizer)))
    index = {name: i for i, name in enumerate(classes)}
    kept_ids, kept_labels = [], []
    for sentence, value in zip(rows[text], rows[label], strict=True):
        ids = hub.encode(sentence) if isinstance(sentence, str) else []
        if len(ids) >= length:
            kept_ids.append(ids[:length])
            kept_labels.append(int(value) if hasattr(feature, "names") else index[str(value)])
    if not kept_ids:
        raise ConfigError(f"{where}: no text of split {split!r} has {length} tokens or more; lower length")
    training = None if split == train_split else (lambda: data.load(
        "hf", path=path, tokenizer=tokenizer, split=train_split, train_split=train_split, config=config, text=text,
        label=label, length=length))
    source = f"Hugging Face dataset {path}{'/' + config if config else ''}, split {split}; tokenizer {tokenizer}"
    return TextSet(f"hf-{path.rstrip('/').split('/')[-1]}-{split}", torch.tensor(kept_ids, dtype=torch.long),
                   torch.tensor(kept_labels, dtype=torch.long), classes, (), (), source=source, tokenizer=hub,
                   training_split=training)
