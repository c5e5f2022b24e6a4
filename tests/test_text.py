"""The text modality: the shipped corpus and tokenizer, ROUGE, the transformers, and TAG, LAMP and DAGER through the
harness (runner, store, report), with the defenses that transform any update."""

import functools
import gzip
import hashlib

import pytest
import torch

from giabench import data, models, protocols, registry, runner, suite, text, text_metrics
from giabench.attacks.dager import Dager
from giabench.attacks.text_optimization import LAMP, moves
from giabench.attacks.text_prior import language_model
from giabench.contracts import ServerView
from giabench.errors import ConfigError, NotApplicable
from giabench.leaderboard import report, tables
from giabench.leaderboard import text as text_report
from giabench.store import Store

SMALL = data.load("austen", vocabulary=512)


def _cell(text_yaml: str, tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(text_yaml, encoding="utf-8")
    return suite.load(str(path))


def test_the_corpus_is_the_built_file_of_six_novels():
    raw = gzip.decompress(text.CORPUS.read_bytes())
    # what tools/build_austen_corpus.py writes from r-cran-janeaustenr 1.0.0-1
    assert hashlib.sha256(raw).hexdigest() == "729f53746f7cdd2c55d91b9e5c1c88238ef7723306516ebfea926723a29ffb40"
    pairs = text.read_corpus()
    assert len(pairs) == 12000
    assert sorted({n for n, _ in pairs}) == ["emma", "mansfield-park", "northanger-abbey", "persuasion",
                                             "pride-and-prejudice", "sense-and-sensibility"]
    assert pairs[0] == ("emma", "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy "
                                "disposition, seemed to unite some of the best blessings of existence; and had lived "
                                "nearly twenty-one years in the world with very little to distress or vex her.")


def test_tokenizer_encodes_and_decodes_known_words_and_marks_the_rest_unknown():
    tokenizer = SMALL.tokenizer
    assert tokenizer.vocabulary[0] == text.UNKNOWN and len(tokenizer.vocabulary) == 512
    ids = tokenizer.encode("It was a letter, said she -- Zyzzyva!")
    assert tokenizer.decode(ids) == "it was a letter , said she -- <unk> !"


def test_splits_are_disjoint_and_sequences_have_the_requested_length():
    test, train = data.load("austen", length=8), data.load("austen", length=8, split="train")
    assert test.images.shape[1] == 8 and test.shape == (8, 4096) and test.num_classes == 6
    assert len(train) > 8 * len(test)
    assert test.tokenizer == train.tokenizer  # both counted on the training sentences
    with pytest.raises(ConfigError, match="length"):
        data.load("austen", length=1)


@pytest.mark.parametrize(("prediction", "reference", "n", "expected"), [
    ("the cat sat", "the cat sat on the mat", 1, 200 / 3),  # P = 1, R = 1/2
    ("the cat sat", "the cat sat on the mat", 2, 100 * 2 * 0.4 / 1.4),  # P = 1, R = 2/5
    ("The, cat!", "the cat", 1, 100.0),  # case and punctuation are dropped
    ("cat", "cat", 2, 0.0),  # no bigram
    ("dog", "cat", 1, 0.0),
])
def test_rouge_matches_hand_computed_values(prediction, reference, n, expected):
    assert text_metrics.rouge(prediction, reference, n) == pytest.approx(expected)


def test_text_scores_match_reconstructions_to_sequences_in_any_order():
    x, y = SMALL.images[:4], SMALL.labels[:4]
    summary, rows, order = text_metrics.score(x.flip(0), None, x, y, SMALL.texts)
    assert summary["rouge1"] == 100 and summary["rouge2"] == 100 and summary["token_acc"] == 1
    assert summary["exact"] == 4 and list(order) == [3, 2, 1, 0]
    assert rows[0]["text"] == rows[0]["text_pred"] == SMALL.texts(x[:1])[0]
    wrong = x.clone()
    wrong[:, 0] = 0
    assert text_metrics.score(wrong, None, x, y, SMALL.texts)[0]["exact"] == 0


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_transformers_take_ids_or_word_embeddings_and_are_initialized_as_their_papers_code(arch):
    model = models.build(arch, {"width": 64, "heads": 2}, SMALL, "untrained", 0)
    x = SMALL.images[:3]
    assert torch.allclose(model(x), model(model.net.token_embedding(x)))
    assert model(x).shape == (3, 6)
    assert abs(float(model.net.token_embedding.weight.detach().std()) - 0.02) < 0.002
    assert float(model.net.blocks[0].attention.query.bias.detach().abs().max()) == 0


def test_the_decoder_is_causal_and_the_encoder_is_not():
    x = SMALL.images[:2]
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 512
    for arch, causal in (("gpt2", True), ("bert", False)):
        net = models.build(arch, {"width": 64, "heads": 2}, SMALL, "untrained", 0).net
        before, after = net.query_inputs(x, 2)[1], net.query_inputs(changed, 2)[1]
        assert torch.allclose(before[:, :-1], after[:, :-1]) == causal


@pytest.mark.parametrize("lora", [0, 8])
def test_the_decoders_last_position_shortcut_equals_its_full_forward_pass(lora):
    net = models.build("gpt2", {"width": 128, "heads": 2, "lora": lora}, SMALL, "untrained", 0).net
    x = SMALL.images[:40, :7]
    with torch.no_grad():
        assert torch.allclose(net.last_second_query_input(x), net.query_inputs(x, 2)[1][:, -1], atol=1e-5)


def _view(arch, batch, defense=None, width=768, seed=0):
    model = models.build(arch, {"width": width, "heads": width // 64}, SMALL, "untrained", 0)
    protocol = protocols.build("fedsgd", {}, model)
    index = data.sample_index(SMALL, batch, seed)
    x, y = SMALL.images[index], SMALL.labels[index]
    client = defense(protocol) if defense else None
    message = client.share(x, y, torch.Generator().manual_seed(1)) if client else protocol.update(x, y)
    return ServerView(model, protocol, message, dict(client.public) if client else {}, SMALL.shape, 6, batch), x


@pytest.mark.parametrize(("arch", "batch"), [("gpt2", 4), ("bert", 2)])
def test_dager_recovers_a_batch_exactly(arch, batch):
    view, x = _view(arch, batch)
    recon = Dager().reconstruct(view, None, torch.Generator().manual_seed(0))
    summary = text_metrics.score(recon.images, None, x, torch.zeros(batch), SMALL.texts)[0]
    assert summary["exact"] == batch and recon.extra["exact_sequences"] == batch


def test_dager_fails_once_the_batch_has_more_tokens_than_the_width():
    view, x = _view("gpt2", 8, width=64)  # 96 tokens, width 64
    recon = Dager().reconstruct(view, None, torch.Generator().manual_seed(0))
    assert text_metrics.score(recon.images, None, x, torch.zeros(8), SMALL.texts)[0]["rouge1"] < 50


def test_dager_completes_a_pruned_gradient_and_recovers_more_than_reading_it_as_it_is():
    prune = functools.partial(registry.defenses.get("prune"), fraction=0.9)
    scores = {0: 0.0, 50: 0.0}
    for seed in (0, 1):
        view, x = _view("gpt2", 4, prune, seed=seed)
        assert set(view.public["mask"]) == set(view.message)  # the support is public
        for impute in scores:
            recon = Dager(impute=impute).reconstruct(view, None, torch.Generator().manual_seed(0))
            scores[impute] += text_metrics.score(recon.images, None, x, torch.zeros(4), SMALL.texts)[0]["rouge1"]
    assert scores[50] > scores[0] + 10, scores


def _lora_view(up_std: float):
    model = models.build("gpt2", {"lora": 32}, SMALL, "untrained", 0)
    with torch.no_grad():  # a fine-tuned adapter: its up-projection has left 0
        for name, p in model.named_parameters():
            if name.endswith("up.weight"):
                p.normal_(0, up_std, generator=torch.Generator().manual_seed(5))
    protocol = protocols.build("fedsgd", {}, model)
    x, y = SMALL.images[:2], SMALL.labels[:2]
    return ServerView(model, protocol, protocol.update(x, y), {}, SMALL.shape, 6, 2), x


def test_lora_shares_only_the_adapters_and_dager_reads_their_down_projections():
    view, x = _lora_view(0.02)
    assert view.message and all(".adapters." in k for k in view.message)
    assert sum(v.numel() for v in view.message.values()) == 2 * 2 * 2 * 32 * 768  # 2 blocks, q and v, A and B
    recon = Dager(tau1=1e-4, tau2=5e-3).reconstruct(view, None, torch.Generator().manual_seed(0))
    assert text_metrics.score(recon.images, None, x, torch.zeros(2), SMALL.texts)[0]["exact"] == 2


def test_dager_on_a_fresh_lora_adapter_is_not_applicable():
    view, _ = _lora_view(0.0)
    with pytest.raises(NotApplicable, match="up-projection is still 0"):
        Dager().reconstruct(view, None, torch.Generator().manual_seed(0))


def test_lamp_moves_are_permutations_and_start_with_the_identity():
    orders = moves(10, 40, torch.Generator().manual_seed(0))
    assert torch.equal(orders[0], torch.arange(10))
    assert all(torch.equal(o.sort().values, torch.arange(10)) for o in orders)
    assert len({tuple(o.tolist()) for o in orders}) > 20


def test_a_lamp_discrete_step_never_raises_its_score():
    view, x = _view("gpt2", 2, width=64)
    model, table = view.model, view.model.net.token_embedding.weight.detach()
    attack = LAMP(candidates=20, alpha_lm=0.0)

    def score(e):
        return float(((model(e) - model(x)) ** 2).sum().detach())

    start = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(0)) * 0.02
    moved = attack._discrete(start, lambda e: torch.tensor(score(e)), None, table, torch.Generator().manual_seed(1))
    assert score(moved) <= score(start)


def test_the_language_model_prior_learns_the_text():
    lm = language_model(SMALL.images, 512)
    held_out = data.load("austen", vocabulary=512, split="train").images[:200]
    untrained = language_model.__globals__["CausalLM"](12, 512)
    assert float(lm.perplexity_loss(held_out).mean()) < float(untrained.perplexity_loss(held_out).mean()) - 1.0


SUITE = """
name: text-test
defaults: {dataset: {name: austen, vocabulary: 512}, protocol: fedsgd, selection: random}
grid:
  - model: gpt2
    attack: dager
    defense: [none, {name: dp-sgd, clip: 1.0, noise_multiplier: 1.0}, {name: prune, fraction: 0.9}]
    batch_size: 4
    seed: [0]
  - model: {name: gpt2, width: 64, heads: 2}
    attack: [{name: tag, iterations: 1}, {name: tag, iterations: 100},
             {name: lamp, iterations: 60, init_candidates: 5, candidates: 8, every: 20}]
    threat_model: D
    seed: [0]
"""


def test_text_cells_run_through_the_harness_store_and_report(tmp_path):
    loaded = _cell(SUITE, tmp_path)
    runner.run_suite(loaded, tmp_path / "run", runner.Environment(), show_progress=False)
    cells = Store(tmp_path / "run").cells()
    assert (cells["status"] == "ok").all(), cells["note"].tolist()
    dager = cells[cells["attack"] == "dager"].set_index("defense")
    assert dager.loc["none", "rouge1"] == 100 and dager.loc["none", "exact"] == 4
    assert dager.loc["dp-sgd", "rouge1"] < 30 and dager.loc["prune", "rouge1"] < 50  # the defenses break the span
    assert dager.loc["dp-sgd", "epsilon"] < float("inf")
    tag = cells[cells["attack"] == "tag"].set_index("iterations")["rouge1"]
    assert tag[100] > 20 and tag[100] > tag[1] + 10
    assert cells[cells["attack"] == "lamp"]["rouge1"].iloc[0] > 20
    frame = tables.cells(tmp_path / "run")
    report.write(frame, tmp_path / "run", tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'id="text"' in html and "Text reconstructions" in html
    truth = Store(tmp_path / "run").images()["text"].iloc[0]
    assert truth.split(" ")[0] in html and "<unk>" not in html  # sentences shown, escaped
    stored = Store(tmp_path / "run").images()
    galleries = text_report.examples(frame, stored, text_report.table(frame, stored))
    for shown in galleries:  # best, median, worst by ROUGE-1 over a setting's sequences, each once
        names, scores = [p["name"] for p in shown["pairs"]], [p["rouge1"] for p in shown["pairs"]]
        assert names in (["best"], ["best", "worst"], ["best", "median", "worst"]) and scores == sorted(scores)[::-1]
    assert any(len(shown["pairs"]) == 3 for shown in galleries) and "worst, seed" in html


@pytest.mark.parametrize(("attack", "dataset"), [("ig", "austen"), ("dager", "mnist-sample")])
def test_an_attack_on_the_wrong_kind_of_data_is_refused_naming_it(tmp_path, attack, dataset):
    model = "gpt2" if dataset == "austen" else "mlp"
    loaded = _cell(f"name: bad\ngrid:\n  - {{dataset: {dataset}, model: {model}, attack: {attack}, seed: 0}}\n",
                   tmp_path)
    with pytest.raises(ConfigError, match=f"attack {attack} works on .* data; dataset {dataset} holds"):
        runner.validate(loaded.cells, runner.Environment())


def test_an_image_only_defense_on_text_is_refused(tmp_path):
    loaded = _cell("name: bad\ngrid:\n  - {dataset: austen, model: gpt2, attack: dager, defense: soteria, seed: 0}\n",
                   tmp_path)
    with pytest.raises(ConfigError, match="defense soteria works on image data; dataset austen holds text"):
        runner.validate(loaded.cells, runner.Environment())
