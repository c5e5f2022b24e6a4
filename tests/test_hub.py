"""The ``hf`` extra: Hugging Face models and text datasets, on small local files written by ``save_pretrained``."""

import csv
import dataclasses
import json

import pytest
import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers import models as word_models
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from giabench import data, hub, models, runner, suite, text
from giabench.errors import ConfigError
from giabench.store import Store

pytestmark = pytest.mark.xdist_group("hub")
VOCABULARY = 1000
LENGTH = 8


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A word-level tokenizer, GPT-2 and BERT checkpoints without a classification head as the Hub's (width 64, 2
    blocks), and a dataset directory of train.csv / test.csv (sentences of the embedded corpus labelled by novel)."""
    root = tmp_path_factory.mktemp("hub")
    pairs = text.read_corpus()
    (root / "data").mkdir()
    for split, rows in (("train", pairs[1::10][:300]), ("test", pairs[::10][:60])):
        with open(root / "data" / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "novel"])
            writer.writerows((sentence, novel) for novel, sentence in rows)
    split_words = pre_tokenizers.Whitespace()
    counts = {}
    for _, sentence in pairs[:3000]:
        for word, _ in split_words.pre_tokenize_str(sentence.lower()):
            counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[:VOCABULARY - 1]
    words = Tokenizer(word_models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(ranked)}}, "[UNK]"))
    words.normalizer, words.pre_tokenizer = normalizers.Lowercase(), split_words
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(root / "tokenizer")
    torch.manual_seed(1234)  # not a cell's seed: pretrained: false must draw other weights
    GPT2LMHeadModel(GPT2Config(vocab_size=VOCABULARY, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(root / "gpt2")
    BertModel(BertConfig(vocab_size=VOCABULARY, max_position_embeddings=32, hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=128)).save_pretrained(root / "bert")
    return root


def _data(files, **params):
    return data.load("hf", path=str(files / "data"), tokenizer=str(files / "tokenizer"), text="sentence",
                     label="novel", length=LENGTH, **params)


def test_a_local_dataset_is_tokenized_into_fixed_length_sequences_with_its_labels(files):
    test = _data(files)
    assert test.modality == "text" and test.shape == (LENGTH, VOCABULARY)
    assert test.classes == ["emma", "mansfield-park"]  # the novels of both splits, sorted
    assert test.texts(test.images[:1]) == ["emma woodhouse , handsome , clever , and"]
    assert len(test.training()) > 250 and test.training().classes == test.classes


def test_the_wrapped_models_match_hugging_faces_forward_pass_and_give_the_attacks_their_inputs(files):
    test = _data(files)
    for name in ("gpt2", "bert"):
        net = models.build("hf", {"checkpoint": str(files / name)}, test, "untrained", 0).net
        x = test.images[:3].clamp_min(1)  # no token is GPT-2's padding id 0 below
        if name == "gpt2":
            net.hf.config.pad_token_id = 0
        assert torch.allclose(net(x), net.hf(input_ids=x).logits, atol=1e-6)
        assert torch.allclose(net(x), net(net.token_embedding(x)))
        first, second = net.query_inputs(x, 2)
        assert first.shape == second.shape == (3, LENGTH, 64)
        assert torch.allclose(first[:, 5], net.first_query_inputs(5)[x[:, 5]], atol=1e-6)
        grad = {n: p for n, p in net.named_parameters()}[net.attention_weights(1)[0]]
        assert net.input_rows(net.attention_weights(1)[0], grad).shape[1] == 64  # input-major rows


def test_the_same_seed_draws_the_same_fresh_head_and_pretrained_false_redraws_every_weight(files):
    test = _data(files)
    build = lambda seed, **p: dict(models.build("hf", {"checkpoint": str(files / "gpt2"), **p}, test,  # noqa: E731
                                                "untrained", seed).net.named_parameters())
    a, b, c = build(0), build(0), build(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["hf.transformer.wte.weight"], c["hf.transformer.wte.weight"])  # the checkpoint's
    assert not torch.equal(a["hf.score.weight"], c["hf.score.weight"])  # the fresh head, by seed
    fresh = build(0, pretrained=False)
    assert not torch.equal(a["hf.transformer.wte.weight"], fresh["hf.transformer.wte.weight"])


SUITE = """
name: hub
defaults:
  dataset: {{name: hf, path: {root}/data, tokenizer: {root}/tokenizer, text: sentence, label: novel, length: 8}}
  selection: ordered
grid:
  - model: {{name: hf, checkpoint: {root}/gpt2}}
    attack: dager
    batch_size: 4
    defense: [none, {{name: dp-sgd, noise_multiplier: 1.0, clip: 1.0}}]
    seed: 0
  - model: {{name: hf, checkpoint: {root}/bert}}
    attack: dager
    batch_size: 1
    seed: 0
  - model: {{name: hf, checkpoint: {root}/gpt2}}
    attack: [{{name: tag, iterations: 1}}, {{name: tag, iterations: 60}}]
    batch_size: 1
    seed: 0
"""


def test_dager_and_tag_attack_hugging_face_models_through_the_harness(files, tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(root=files), encoding="utf-8")
    runner.run_suite(suite.load(str(path)), tmp_path / "run", runner.Environment(), show_progress=False)
    cells = Store(tmp_path / "run").cells()
    assert (cells["status"] == "ok").all(), cells["note"].tolist()
    dager = cells[cells["attack"] == "dager"]
    assert (dager[dager["defense"] == "none"]["exact"] == [4, 1]).all()  # GPT-2 at B = 4, BERT at B = 1: exact
    assert dager[dager["defense"] == "dp-sgd"]["rouge1"].iloc[0] < 30
    tag = cells[cells["attack"] == "tag"].set_index("iterations")["rouge1"]
    assert tag[60] > tag[1] + 20  # matching the gradient moves the embeddings to the sentence's words


def test_bad_hugging_face_input_gets_a_message_naming_it(files, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="dataset hf: text must be one of"):
        data.load("hf", path=str(files / "data"), tokenizer=str(files / "tokenizer"), label="novel")
    with pytest.raises(ConfigError, match="cannot load the config of"):
        models.build("hf", {"checkpoint": str(tmp_path / "missing")}, _data(files), "untrained", 0)
    (tmp_path / "roberta").mkdir()
    (tmp_path / "roberta" / "config.json").write_text(json.dumps({"model_type": "roberta"}), encoding="utf-8")
    with pytest.raises(ConfigError, match="model_type must be one of"):
        models.build("hf", {"checkpoint": str(tmp_path / "roberta")}, _data(files), "untrained", 0)
    small = dataclasses.replace(_data(files), tokenizer=text.Tokenizer(tuple(map(str, range(VOCABULARY + 1)))))
    with pytest.raises(ConfigError, match="cover the tokenizer's 1001 tokens"):
        models.build("hf", {"checkpoint": str(files / "gpt2")}, small, "untrained", 0)
    monkeypatch.setattr(hub.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError(name)))
    with pytest.raises(ConfigError, match=r"pip install 'giabench\[hf\]'"):
        models.build("hf", {"checkpoint": str(files / "gpt2")}, _data(files), "untrained", 0)
