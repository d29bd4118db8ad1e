"""Neuron dissection (xaiarena.dissect): similarity functions against hand-computed values, hooks,
concept sets, the annotations and CLIP scorers, the runner, the CLI and config errors.

The CLIP tests use a tiny randomly initialised ``CLIPModel`` built from a ``CLIPConfig`` with a
byte-level tokenizer written offline: they check the plumbing (loading from a folder, tokenising,
preprocessing, embedding, cosine similarity, caching), not what a trained CLIP would say.
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tests.support.paths import SHARED
from xaiarena.cli import app
from xaiarena.config import load_config
from xaiarena.dissect import similarity as S
from xaiarena.dissect.activations import (
    LayerNotFoundError,
    is_output_layer,
    record_activations,
    resolve_layer,
)
from xaiarena.dissect.concepts import build_concepts
from xaiarena.dissect.options import OptionError
from xaiarena.dissect.probe import Probe, select_probe
from xaiarena.dissect.results import read_neurons
from xaiarena.dissect.runner import label_neurons
from xaiarena.dissect.scorers import (
    AnnotationScorer,
    ClipScorer,
    OpenClipScorer,
    ScorerUnavailableError,
    colour_name,
    object_colours,
)
from xaiarena.errors import ConfigError
from xaiarena.hashing import stable_hash

pytestmark = pytest.mark.usefixtures("one_thread")
cli = CliRunner()


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# --------------------------------------------------------------------------- similarity: by hand


def test_soft_wpmi_by_hand():
    # two images, two neurons, two concepts. a = ln 3 turns the rows of P = I into softmax rows
    # (3/4, 1/4) and (1/4, 3/4). top_k = 1 and p_start = p_end = 1: neuron 0's set is image 0,
    # neuron 1's is image 1. log p(c|B) = log q; p(c) = (3/4 + 1/4) / 2 = 1/2 for both concepts.
    acts = t64([[5.0, 1.0], [2.0, 4.0]])
    P = t64([[1.0, 0.0], [0.0, 1.0]])
    got = S.soft_wpmi(
        acts, P, top_k=1, a=math.log(3), lam=1.0, p_start=1.0, p_end=1.0, min_prob=1e-15
    )
    want = [
        [math.log(0.75 / 0.5), math.log(0.25 / 0.5)],
        [math.log(0.25 / 0.5), math.log(0.75 / 0.5)],
    ]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    # lam = 0: plain log p(c | B)
    got0 = S.soft_wpmi(
        acts, P, top_k=1, a=math.log(3), lam=0.0, p_start=1.0, p_end=1.0, min_prob=1e-15
    )
    np.testing.assert_allclose(got0.numpy(), np.log([[0.75, 0.25], [0.25, 0.75]]), rtol=1e-10)


def test_soft_wpmi_by_hand_with_soft_membership():
    # one neuron's top 2 images with membership 0.9 then 0.9 - (1/2)(0.9 - 0.5) = 0.7;
    # q(image, c) for concept 0 = 3/4 then 1/4: 1 + w (q - 1) = 1 - 0.9/4 = 0.775 and
    # 1 - 0.7*3/4 = 0.475
    acts = t64([[3.0], [2.0], [1.0]])
    P = t64([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    got = S.soft_wpmi(
        acts, P, top_k=2, a=math.log(3), lam=0.0, p_start=0.9, p_end=0.5, min_prob=1e-15
    )
    c0 = math.log(1 - 0.9 * 0.25) + math.log(1 - 0.7 * 0.75)
    c1 = math.log(1 - 0.9 * 0.75) + math.log(1 - 0.7 * 0.25)
    np.testing.assert_allclose(got.numpy(), [[c0, c1]], rtol=1e-10)
    # one neuron: p(c) = p(c | B), so with lam = 1 every concept scores 0
    np.testing.assert_allclose(
        S.soft_wpmi(acts, P, top_k=2, a=math.log(3), p_start=0.9, p_end=0.5).numpy(),
        [[0.0, 0.0]],
        atol=1e-12,
    )


def test_wpmi_by_hand():
    # top_k = 2: neuron 0 -> images {0, 1}, neuron 1 -> images {2, 1}; q rows from a = ln 3
    acts = t64([[9.0, 0.0], [8.0, 5.0], [1.0, 7.0]])
    P = t64([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = S.wpmi(acts, P, top_k=2, a=math.log(3), lam=0.5, min_prob=1e-15)
    lg = {0: math.log(0.75) * 2, 1: math.log(0.25) * 2}  # neuron 0: both images favour concept 0
    l1 = {0: math.log(0.75) + math.log(0.25), 1: math.log(0.25) + math.log(0.75)}
    logp = {c: math.log((math.exp(lg[c]) + math.exp(l1[c])) / 2) for c in (0, 1)}
    want = [[lg[c] - 0.5 * logp[c] for c in (0, 1)], [l1[c] - 0.5 * logp[c] for c in (0, 1)]]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_rank_reorder_by_hand():
    # one neuron, 4 images, top_fraction 1: activations 4 > 3 > 2 > 1 on images 0..3.
    # concept A ranks the images the same way (error 0); concept B reverses them: image j gets the
    # activation of its rank in B (1, 2, 3, 4), so |t - r|^3 = 27, 1, 1, 27 -> mean 14.
    acts = t64([[4.0], [3.0], [2.0], [1.0]])
    P = t64([[0.9, 0.6], [0.8, 0.7], [0.7, 0.8], [0.6, 0.9]])
    got = S.rank_reorder(
        acts, P, p=3.0, top_fraction=1.0, scale_p=0.5, generator=torch.Generator().manual_seed(7)
    )
    # the baseline: mean |sorted(t) - sorted(t)[perm]|^3 over the 5 permutations the function draws
    g = torch.Generator().manual_seed(7)
    asc = np.array([1.0, 2.0, 3.0, 4.0])
    base = np.mean(
        [np.abs(asc - asc[torch.randperm(4, generator=g).numpy()]) ** 3 for _ in range(5)]
    )
    assert base > 0
    want = [[0.0, -(14.0 / base) / math.sqrt(0.75)]]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_cos_similarity_by_hand():
    acts = t64([[1.0, 0.0], [0.0, 2.0], [1.0, 2.0]])
    P = t64([[3.0], [4.0], [0.0]])
    got = S.cos_similarity(acts, P)
    # neuron 0 = (1, 0, 1), concept = (3, 4, 0): 3 / (sqrt 2 * 5);
    # neuron 1 = (0, 2, 2): 8 / (sqrt 8 * 5)
    np.testing.assert_allclose(
        got.numpy(), [[3 / (math.sqrt(2) * 5)], [8 / (math.sqrt(8) * 5)]], rtol=1e-12
    )


def test_cos_similarity_cubed_by_hand():
    acts = t64([[0.0], [1.0], [5.0]])  # centred: -2, -1, 3 -> cubed: -8, -1, 27
    P = t64(
        [[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]]
    )  # concept 0 centred -1, 0, 1 -> -1, 0, 1; concept 1 constant
    got = S.cos_similarity_cubed(acts, P, min_norm=1e-3)
    norm_a = math.sqrt(64 + 1 + 729)
    # concept 1 is all zeros after centring: its norm is clamped at min_norm, the dot product is 0
    np.testing.assert_allclose(
        got.numpy(), [[(8 + 27) / (norm_a * math.sqrt(2)), 0.0]], rtol=1e-12, atol=1e-15
    )


# --------------------------------------------------------------------- similarity: NumPy references


def _np_softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _np_wpmi_family(acts, P, top_k, a, lam, min_prob, p_start=None, p_end=None):
    q = _np_softmax(a * P)
    n_neurons = acts.shape[1]
    L = np.zeros((n_neurons, P.shape[1]))
    for m in range(n_neurons):
        order = np.argsort(-acts[:, m], kind="stable")[:top_k]
        for j, i in enumerate(order):
            if p_start is None:
                L[m] += np.log(q[i] + min_prob)
            else:
                w = p_start - j / top_k * (p_start - p_end)
                L[m] += np.log(1 + w * (q[i] - 1) + min_prob)
    logp = np.log(np.mean(np.exp(L - L.max(0)), axis=0)) + L.max(0)
    return L - lam * logp


def _np_cos(a, b):
    return (a / np.linalg.norm(a, axis=0)).T @ (b / np.linalg.norm(b, axis=0))


@pytest.fixture()
def random_matrices():
    rng = np.random.default_rng(3)
    acts = rng.normal(size=(40, 6))  # distinct values: no ties in the top-k
    P = rng.uniform(0.1, 0.35, size=(40, 9))  # CLIP-like cosine similarities
    return acts, P


def test_soft_wpmi_and_wpmi_match_numpy(random_matrices, monkeypatch):
    acts, P = random_matrices
    want_soft = _np_wpmi_family(acts, P, 7, 10.0, 1.0, 1e-7, 0.998, 0.97)
    want_w = _np_wpmi_family(acts, P, 5, 2.0, 0.6, 1e-7)
    got_soft = S.soft_wpmi(t64(acts), t64(P), top_k=7)
    np.testing.assert_allclose(got_soft.numpy(), want_soft, rtol=1e-9)
    np.testing.assert_allclose(S.wpmi(t64(acts), t64(P), top_k=5).numpy(), want_w, rtol=1e-9)
    monkeypatch.setattr(S, "_CHUNK_ELEMENTS", 20)  # one neuron per chunk: same numbers
    np.testing.assert_allclose(
        S.soft_wpmi(t64(acts), t64(P), top_k=7).numpy(), want_soft, rtol=1e-9
    )


def test_cosine_functions_match_numpy(random_matrices):
    acts, P = random_matrices
    np.testing.assert_allclose(
        S.cos_similarity(t64(acts), t64(P)).numpy(), _np_cos(acts, P), rtol=1e-10
    )
    ac, pc = (acts - acts.mean(0)) ** 3, (P - P.mean(0)) ** 3
    want = (ac / np.maximum(np.linalg.norm(ac, axis=0), 1e-3)).T @ (
        pc / np.maximum(np.linalg.norm(pc, axis=0), 1e-3)
    )
    np.testing.assert_allclose(S.cos_similarity_cubed(t64(acts), t64(P)).numpy(), want, rtol=1e-10)


def test_rank_reorder_matches_numpy(random_matrices):
    acts, P = random_matrices
    got = S.rank_reorder(
        t64(acts), t64(P), top_fraction=0.25, generator=torch.Generator().manual_seed(1)
    ).numpy()
    g = torch.Generator().manual_seed(1)
    n = 10
    perms = [torch.randperm(n, generator=g).numpy() for _ in range(5)]
    for m in range(acts.shape[1]):
        top = np.argsort(-acts[:, m], kind="stable")[:n]
        t = acts[top, m]
        asc = np.sort(t)
        base = np.mean([np.abs(asc - asc[pm]) ** 3 for pm in perms])
        for c in range(P.shape[1]):
            s = P[top, c]
            ranks = np.argsort(np.argsort(s, kind="stable"), kind="stable")
            err = np.mean(np.abs(t - asc[ranks]) ** 3) / base
            assert got[m, c] == pytest.approx(-err / s.mean() ** 0.5, rel=1e-9)


def test_similarity_prefers_the_matching_concept():
    """Each function gives a neuron the concept whose scores follow its activations."""
    rng = np.random.default_rng(0)
    n = 400
    concept = rng.uniform(0.15, 0.3, size=(n, 5))
    acts = np.stack(
        [concept[:, 3] * 4 + rng.normal(0, 0.01, n), concept[:, 1] * 2 + rng.normal(0, 0.01, n)], 1
    )
    for name in ("soft_wpmi", "wpmi", "rank_reorder", "cos_similarity_cubed", "cos_similarity"):
        sim = S.compute(
            name,
            torch.tensor(acts, dtype=torch.float32),
            torch.tensor(concept, dtype=torch.float32),
        )
        assert sim.argmax(1).tolist() == [3, 1], name


def test_similarity_option_errors():
    acts, P = torch.rand(10, 2), torch.rand(10, 3)
    with pytest.raises(OptionError) as exc:
        S.soft_wpmi(acts, P)  # top_k 100 > 10 images
    assert exc.value.option == "top_k" and "10 probe images" in exc.value.message
    with pytest.raises(OptionError) as exc:
        S.soft_wpmi(acts, P, top_k=3, p_start=1.5)
    assert exc.value.option == "p_start"
    with pytest.raises(OptionError) as exc:
        S.rank_reorder(acts, P)  # 5% of 10 images < 2
    assert exc.value.option == "top_fraction"
    with pytest.raises(ValueError, match="one row per probe image"):
        S.cos_similarity(acts, P[:5])


# --------------------------------------------------------------------------- activations


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_record_activations_pools_and_removes_hooks():
    torch.manual_seed(0)
    net = _Net().train()
    x = torch.rand(5, 1, 6, 6)
    acts, out = record_activations(net, x, ["conv", "fc"], batch_size=2, show_progress=False)
    conv = net.conv(x)
    torch.testing.assert_close(acts["conv"], conv.mean(dim=(2, 3)))
    torch.testing.assert_close(out, net(x))
    acts_max, _ = record_activations(net, x, ["conv"], pool="max", show_progress=False)
    torch.testing.assert_close(acts_max["conv"], conv.amax(dim=(2, 3)))
    assert is_output_layer(acts["fc"], out) and not is_output_layer(acts["conv"], out)
    assert not net.conv._forward_hooks and not net.fc._forward_hooks
    assert net.training  # the mode is restored


def test_layers_resolve_with_or_without_net_prefix(small_task):
    from xaiarena.models import build_model

    lenet = build_model("lenet", small_task, seed=0)  # names only: no training needed
    assert resolve_layer(lenet, "classifier.2") is resolve_layer(lenet, "net.classifier.2")
    with pytest.raises(LayerNotFoundError) as exc:
        resolve_layer(lenet, "classifier.9")
    assert "classifier.2" in str(exc.value) and "features.1" in str(exc.value)


# --------------------------------------------------------------------------- concept sets


def test_concept_sets(tmp_path, small_task):
    f = tmp_path / "c.txt"
    f.write_text("# my concepts\ndog\n\n cat \ndog\nstriped\n")
    assert build_concepts("file", {"path": str(f)}, None) == ["dog", "cat", "striped"]
    assert build_concepts("list", {"items": ["a", "b", "a"]}, None) == ["a", "b"]
    assert build_concepts("dataset_classes", {}, small_task) == [str(i) for i in range(10)]
    names = build_concepts("imagenet_classes", {}, None)
    # 1,000 classes, 998 names: "crane" (bird, machine) and "maillot" appear twice
    assert len(names) == 998 and names[2] == "great white shark" and "crane" in names
    ann = build_concepts("annotations", {}, small_task)
    assert ann[:10] == [str(i) for i in range(10)] and {"red", "green", "blue", "white"} <= set(ann)


def test_words_concept_set():
    pytest.importorskip("wordfreq")
    words = build_concepts("words", {"n": 20000}, None)
    assert len(words) == 20000 == len(set(words))
    assert words[:3] == ["the", "to", "and"] and all(w.isalpha() for w in words)
    assert build_concepts("words", {"n": 50}, None) == words[:50]


# --------------------------------------------------------------------------- annotations scorer


def test_colour_names():
    assert colour_name((1.0, 0.4, 0.35)) == "red"
    assert colour_name((1.0, 1.0, 0.4)) == "yellow"
    assert colour_name((0.4, 1.0, 0.5)) == "green"
    assert colour_name((0.4, 1.0, 1.0)) == "cyan"
    assert colour_name((0.4, 0.5, 1.0)) == "blue"
    assert colour_name((1.0, 0.4, 1.0)) == "magenta"
    assert colour_name((1.0, 0.9, 0.95)) == "white"
    assert colour_name((0.05, 0.05, 0.05)) == "black"


def test_object_colour_ignores_blended_edges():
    img = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    img[0, :, 0, 0] = torch.tensor([60, 255, 90])  # ink: green
    img[0, :, 0, 1] = torch.tensor([60, 255, 90])
    img[0, :, 1, 0] = torch.tensor([200, 120, 120])  # an edge pixel blended with a reddish band
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True
    assert object_colours(img, mask) == ["green"]
    assert object_colours(img, torch.zeros_like(mask)) == [None]


def test_annotation_scorer_on_hard_mnist(small_task):
    probe = select_probe(small_task, "test", 60, seed=0)
    concepts = ["3", "7", "red", "blue"]
    P = AnnotationScorer().score(probe, concepts)
    assert P.shape == (60, 4) and set(P.unique().tolist()) <= {0.0, 1.0}
    labels = probe.labels
    torch.testing.assert_close(P[:, 0], (labels == 3).float())
    torch.testing.assert_close(P[:, 1], (labels == 7).float())
    colours = object_colours(probe.images, probe.masks)
    assert P[:, 2].tolist() == [float(c == "red") for c in colours]
    assert 0 < P[:, 2].sum() < 60  # both occur
    only_class = AnnotationScorer(kinds=["class"]).score(probe, ["3", "7"])
    torch.testing.assert_close(only_class, P[:, :2])
    with pytest.raises(OptionError) as exc:
        AnnotationScorer().score(probe, ["3", "dog"])
    assert exc.value.option == "dissect.concepts"
    assert "dog" in exc.value.message and "knows: 0, 1" in exc.value.message
    with pytest.raises(OptionError, match="no 'segmentation' annotations"):
        AnnotationScorer(kinds=["segmentation"]).score(probe, ["3"])
    with pytest.raises(OptionError) as exc:
        AnnotationScorer(kinds=["digit"])
    assert exc.value.option == "kinds" and "class, colour, segmentation" in exc.value.message


def test_annotation_scorer_voc_segmentation_classes():
    data = SHARED
    if not (data / "voc2012_seg" / "aeroplane.parquet").exists():
        pytest.skip("shared VOC file not found")
    from xaiarena.data import load_task

    task = load_task("voc2012_seg", seed=0, data_dir=str(data), size=64)
    probe = Probe(task, "test", torch.arange(len(task.test)))
    P = AnnotationScorer(kinds=["segmentation"]).score(probe, ["aeroplane", "person"])
    assert P[:, 0].sum() == len(task.test)  # every image of the subset shows an aeroplane
    present = [15 in c for c in task.meta["image_classes"]["test"]]  # 15 = person
    assert P[:, 1].tolist() == [float(v) for v in present] and 0 < sum(present) < len(present)


# --------------------------------------------------------------------------- acceptance (offline)


@pytest.mark.integration
def test_lenet_output_neurons_get_their_own_digit(trained_lenet, small_task):
    """Acceptance: with ground-truth digit concepts, >= 90% of the output neurons are labelled
    with their own class (soft_wpmi, the paper's hyper-parameters). Hidden layers: printed only."""
    probe = select_probe(small_task, "train", None, seed=0)  # 3,000 images
    concepts = build_concepts("dataset_classes", {}, small_task)
    P = AnnotationScorer(kinds=["class"]).score(probe, concepts)
    layers = ["features.7", "classifier.1", "classifier.2"]
    acts, out = record_activations(trained_lenet, probe.images, layers, show_progress=False)
    assert is_output_layer(acts["classifier.2"], out)
    labels = label_neurons(S.compute("soft_wpmi", acts["classifier.2"], P), concepts)
    own = (labels["concept"] == [str(k) for k in range(10)]).mean()
    print(
        f"\noutput layer: {own:.0%} of neurons labelled with their own digit: "
        f"{labels['concept'].tolist()}"
    )
    for layer in layers[:2]:
        a = acts[layer]
        live = a.amax(0) > a.amin(0)  # constant (dead) neurons get an arbitrary label: left out
        hidden = label_neurons(S.compute("soft_wpmi", a[:, live], P), concepts)
        print(
            f"{layer}: {int(live.sum())} of {a.shape[1]} neurons vary; label counts "
            f"{hidden['concept'].value_counts().to_dict()}"
        )
    assert own >= 0.9


def test_untrained_lenet_fails_the_acceptance_check(small_task):
    """The check can fail: an untrained network's output neurons do not track their classes."""
    from xaiarena.models import build_model

    model = build_model("lenet", small_task, seed=5).eval()
    probe = select_probe(small_task, "train", 1000, seed=0)
    concepts = [str(k) for k in range(10)]
    P = AnnotationScorer(kinds=["class"]).score(probe, concepts)
    acts, _ = record_activations(model, probe.images, ["classifier.2"], show_progress=False)
    labels = label_neurons(S.compute("soft_wpmi", acts["classifier.2"], P), concepts)
    assert (labels["concept"] == concepts).mean() < 0.9


# --------------------------------------------------------------------------- CLIP (tiny, random)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A randomly initialised CLIPModel (2 layers, width 32, 32-px images) with a byte-level
    tokenizer and an image processor, saved to a folder: plumbing only, no trained weights."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    for tok in ("<|startoftext|>", "<|endoftext|>"):
        vocab[tok] = len(vocab)
    folder = tmp_path_factory.mktemp("tiny_clip")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    ids = {
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            **ids,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    return folder


def test_clip_scorer_on_tiny_clip(tiny_clip, small_task, tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    probe = select_probe(small_task, "test", 6, seed=0)
    probe.key = "probe-a"
    concepts = ["dog", "red", "seven"]
    store: dict[tuple[str, str], torch.Tensor] = {}
    hits: list[str] = []

    def cached(kind, inputs, compute):  # what the dissect runner passes, without files
        key = (kind, stable_hash(inputs))
        if key in store:
            hits.append(kind)
        else:
            store[key] = compute()
        return store[key]

    scorer = ClipScorer(model=str(tiny_clip), prompt="a photo of a {}", batch_size=4)
    P = scorer.score(probe, concepts, cached=cached, show_progress=False)
    assert P.shape == (6, 3) and bool((P.abs() <= 1 + 1e-5).all())
    # the same numbers computed here directly from the model
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tok = AutoTokenizer.from_pretrained(tiny_clip)
    proc = AutoImageProcessor.from_pretrained(tiny_clip)
    imgs = [a for a in probe.images.permute(0, 2, 3, 1).numpy()]
    with torch.no_grad():
        img = model.get_image_features(
            pixel_values=proc(images=imgs, return_tensors="pt")["pixel_values"]
        )
        enc = tok([f"a photo of a {c}" for c in concepts], padding=True, return_tensors="pt")
        txt = model.get_text_features(**enc)
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    want = torch.nn.functional.normalize(img, dim=1) @ torch.nn.functional.normalize(txt, dim=1).T
    torch.testing.assert_close(P, want, rtol=1e-4, atol=1e-5)
    assert len(store) == 2 and not hits
    again = ClipScorer(model=str(tiny_clip), prompt="a photo of a {}", batch_size=2).score(
        probe, concepts, cached=cached, show_progress=False
    )
    torch.testing.assert_close(again, P)
    assert len(hits) == 2  # image and text embeddings reused (batch size does not matter)
    other = ClipScorer(model=str(tiny_clip), prompt="{}").score(
        probe, concepts, cached=cached, show_progress=False
    )
    assert not torch.allclose(other, P)  # the prompt is used
    assert hits == [
        "image_embeddings",
        "text_embeddings",
        "image_embeddings",
    ]  # ... only the texts re-embedded


@pytest.mark.integration
def test_clip_scorer_end_to_end_through_the_cli(tiny_clip, tmp_path):
    cfg = tmp_path / "clip.yaml"
    cfg.write_text(f"""
name: tiny_clip_dissect
data: {{name: hard_mnist, n_train: 300, n_test: 60}}
model: {{name: lenet, channels: [4, 8], hidden: [8]}}
training: {{epochs: 1, num_threads: 1}}
dissect:
  layers: [features.1, classifier.2]
  concepts: {{name: list, items: [dog, cat, seven, red, striped]}}
  scorer: {{name: clip, model: "{tiny_clip}"}}
  similarity: {{name: soft_wpmi, top_k: 20}}
""")
    out = tmp_path / "run"
    res = cli.invoke(app, ["dissect", str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    neurons = read_neurons(out / "results" / "neurons.csv")
    assert list(neurons.columns[:5]) == ["dataset", "layer", "neuron", "concept", "similarity"]
    assert len(neurons) == 4 + 10 and set(neurons["concept"]) <= {
        "dog",
        "cat",
        "seven",
        "red",
        "striped",
    }
    assert (out / "cache" / "dissect" / "image_embeddings").is_dir()


def test_missing_clip_model_says_how_to_get_one(small_task, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    probe = select_probe(small_task, "test", 4, seed=0)
    with pytest.raises(ScorerUnavailableError) as exc:
        ClipScorer(model=str(tmp_path / "no_such_clip")).score(
            probe, ["a", "b"], show_progress=False
        )
    msg = str(exc.value)
    assert "no_such_clip" in msg and "openai/clip-vit-base-patch16" in msg
    assert (
        "save_pretrained" in msg and "pip install open_clip_torch" in msg and "annotations" in msg
    )


def test_missing_clip_model_exits_2_from_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("""
data: {name: hard_mnist, n_train: 200, n_test: 40}
model: {name: lenet, channels: [4], hidden: [8]}
training: {epochs: 1, num_threads: 1}
dissect:
  layers: [classifier.1]
  concepts: {name: list, items: [a, b]}
  scorer: {name: clip, model: nowhere/clip-x}
""")
    res = cli.invoke(app, ["dissect", str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert (
        "dissect.scorer.model" in res.output
        and "nowhere/clip-x" in res.output
        and "save_pretrained" in res.output
    )


def test_open_clip_scorer(small_task, tiny_clip, monkeypatch):
    probe = select_probe(small_task, "test", 3, seed=0)
    try:
        import open_clip  # noqa: F401
    except Exception:
        monkeypatch.setitem(sys.modules, "open_clip", None)  # import fails
        with pytest.raises(ScorerUnavailableError, match="pip install open_clip_torch"):
            OpenClipScorer().score(probe, ["a", "b"], show_progress=False)
    # the open_clip glue on a stand-in module with open_clip's two calls (plumbing only)
    torch.manual_seed(0)
    img_proj, txt_proj = torch.randn(3 * 8 * 8, 5), torch.randn(7, 5)

    class _Model(nn.Module):
        def encode_image(self, x):
            return x.flatten(1) @ img_proj

        def encode_text(self, ids):
            return torch.nn.functional.one_hot(ids, 7).float().sum(1) @ txt_proj

    def preprocess(pil):
        return torch.from_numpy(np.asarray(pil.resize((8, 8)), dtype=np.float32) / 255.0).permute(
            2, 0, 1
        )

    stub = types.SimpleNamespace(
        create_model_and_transforms=lambda name, pretrained: (_Model(), None, preprocess),
        get_tokenizer=lambda name: (
            lambda texts: torch.tensor([[len(t) % 7, ord(t[0]) % 7] for t in texts])
        ),
    )
    monkeypatch.setitem(sys.modules, "open_clip", stub)
    P = OpenClipScorer(prompt="{}").score(probe, ["ab", "cde"], show_progress=False)
    from PIL import Image

    imgs = torch.stack(
        [preprocess(Image.fromarray(a)) for a in probe.images.permute(0, 2, 3, 1).numpy()]
    )
    tokens = torch.tensor(
        [[2, 97 % 7], [3, 99 % 7]]
    )  # (len % 7, ord(first letter) % 7) of "ab", "cde"
    i = torch.nn.functional.normalize(imgs.flatten(1) @ img_proj, dim=1)
    t = torch.nn.functional.normalize(
        torch.nn.functional.one_hot(tokens, 7).float().sum(1) @ txt_proj, dim=1
    )
    torch.testing.assert_close(P, i @ t.T)


# --------------------------------------------------------------------------- runner, CLI, config


TINY_DISSECT = """
name: tiny_dissect
seed: 0
data: {name: hard_mnist, n_train: 400, n_test: 200}
model: {name: lenet, channels: [4, 8], hidden: [16]}
training: {epochs: 1, batch_size: 64, lr: 0.003, num_threads: 1}
dissect:
  layers: [features.1, classifier.1, classifier.2]
  split: test
  n_images: 150
  concepts: annotations
  scorer: annotations
  similarity: {name: soft_wpmi, top_k: 30}
"""


@pytest.mark.integration
def test_dissect_cli_outputs_caching_and_report(tmp_path):
    cfg = tmp_path / "d.yaml"
    cfg.write_text(TINY_DISSECT)
    out = tmp_path / "run"
    res = cli.invoke(app, ["dissect", str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    neurons = read_neurons(out / "results" / "neurons.csv")
    expected = [
        "dataset",
        "layer",
        "neuron",
        "concept",
        "similarity",
        "top1",
        "top2",
        "top3",
        "top4",
        "top5",
        "top1_similarity",
        "top2_similarity",
        "top3_similarity",
        "top4_similarity",
        "top5_similarity",
    ]
    assert list(neurons.columns[:15]) == expected
    assert neurons.groupby("layer", sort=False).size().to_dict() == {
        "features.1": 4,
        "classifier.1": 16,
        "classifier.2": 10,
    }
    assert (neurons["concept"] == neurons["top1"]).all()
    assert (neurons["top1_similarity"] >= neurons["top2_similarity"]).all()
    out_layer = neurons[neurons["layer"] == "classifier.2"]
    assert out_layer["own_class"].tolist() == [str(k) for k in range(10)]
    assert neurons.loc[neurons["layer"] != "classifier.2", "own_class"].eq("").all()
    info = json.loads((out / "run.json").read_text())
    assert (
        info["kind"] == "dissect" and info["dissect"]["datasets"]["hard_mnist"]["n_images"] == 150
    )
    stages = info["dissect"]["stages"]
    assert {
        "hard_mnist/train",
        "hard_mnist/activations",
        "hard_mnist/scores",
        "hard_mnist/similarity/classifier.2",
    } <= set(stages)
    figs = sorted(p.name for p in (out / "figures").glob("dissect_*.png"))
    assert figs == ["dissect_d1_hard_mnist_concepts.png", "dissect_d1_hard_mnist_similarity.png"]
    html = (out / "dissect.html").read_text()
    assert "classifier.2" in html and "data:image/png;base64," in html and "<script" not in html
    # second run: everything from the cache, same labels
    res = cli.invoke(app, ["dissect", str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    stages = json.loads((out / "run.json").read_text())["dissect"]["stages"]
    for key in (
        "hard_mnist/train",
        "hard_mnist/activations",
        "hard_mnist/scores",
        "hard_mnist/similarity/features.1",
    ):
        assert stages[key]["cache_hit"], key
    pd.testing.assert_frame_equal(read_neurons(out / "results" / "neurons.csv"), neurons)
    # another similarity reuses activations and P
    res = cli.invoke(
        app,
        [
            "dissect",
            str(cfg),
            "--out",
            str(out),
            "--quiet",
            "--set",
            "dissect.similarity=cos_similarity",
        ],
    )
    assert res.exit_code == 0, res.output
    stages = json.loads((out / "run.json").read_text())["dissect"]["stages"]
    assert (
        stages["hard_mnist/activations"]["cache_hit"]
        and not stages["hard_mnist/similarity/classifier.2"]["cache_hit"]
    )
    # the report rebuilds from saved results
    res = cli.invoke(app, ["report", str(out)])
    assert res.exit_code == 0 and "dissect.html" in res.output


IMAGE_FOLDER_DISSECT = """
name: image_folder_dissect
data: {name: image_folder, root: '%s'}
model: {name: lenet, channels: [4], hidden: [8], kernel_size: 3}
training: {epochs: 1, batch_size: 4, num_threads: 1}
dissect:
  layers: [classifier.2]
  concepts: dataset_classes
  scorer: annotations
  similarity: {name: soft_wpmi, top_k: 2}
"""


@pytest.mark.integration
def test_dissect_retrains_when_a_file_of_its_image_folder_changes(tmp_path, make_image_folder):
    """dissect gets its model from the run's train stage (cache.model_key: the image folder's
    fingerprint is part of the key), so a changed image retrains instead of reusing the old
    checkpoint; the torch thread count it sets (training.num_threads) is restored."""
    from PIL import Image

    root = tmp_path / "images"
    make_image_folder(root)
    cfg = tmp_path / "d.yaml"
    cfg.write_text(IMAGE_FOLDER_DISSECT % root)
    out = tmp_path / "run"

    def train_stage() -> dict:
        res = cli.invoke(app, ["dissect", str(cfg), "--out", str(out), "--quiet"])
        assert res.exit_code == 0, res.output
        return json.loads((out / "run.json").read_text())["dissect"]["stages"]["image_folder/train"]

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = train_stage()
        assert torch.get_num_threads() == 2  # training.num_threads: 1 inside, restored afterwards
        assert not first["cache_hit"]
        assert train_stage()["cache_hit"]  # the same files: the checkpoint is reused
        Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(root / "train" / "left" / "0.png")
        again = train_stage()
        assert not again["cache_hit"] and again["model_hash"] != first["model_hash"]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.integration
def test_report_escapes_concepts(tmp_path):
    cfg = tmp_path / "d.yaml"
    cfg.write_text(
        TINY_DISSECT.replace(
            "concepts: annotations", "concepts: {name: file, path: '%s'}" % (tmp_path / "c.txt")
        ).replace("scorer: annotations", "scorer: {name: annotations, kinds: [class]}")
    )
    (tmp_path / "c.txt").write_text("\n".join(str(k) for k in range(10)))
    out = tmp_path / "run"
    assert cli.invoke(app, ["dissect", str(cfg), "--out", str(out), "--quiet"]).exit_code == 0
    csv = out / "results" / "neurons.csv"
    df = read_neurons(csv)
    df.loc[0, "concept"] = "<script>alert(1)</script>"
    df.to_csv(csv, index=False)
    from xaiarena.dissect.report import build_dissect_report

    html = build_dissect_report(out).read_text()
    assert (
        "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    )


def _invoke(tmp_path, yaml_text: str, *sets: str):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    args = ["dissect", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]
    for s in sets:
        args += ["--set", s]
    return cli.invoke(app, args)


def test_config_errors_exit_2_with_key_and_valid_values(tmp_path):
    res = _invoke(
        tmp_path,
        TINY_DISSECT,
        "dissect.similarity.name=soft_wmpi",
        "dissect.scorer=annotation",
        "dissect.concepts.name=wordz",
        "dissect.pool=median",
        "dissect.extra=1",
    )
    assert res.exit_code == 2
    out = res.output
    assert (
        "dissect.similarity.name" in out
        and "Did you mean 'soft_wpmi'" in out
        and "rank_reorder" in out
    )
    assert (
        "dissect.scorer.name" in out and "Did you mean 'annotations'" in out and "open_clip" in out
    )
    assert "dissect.concepts.name" in out and "imagenet_classes" in out
    assert "dissect.pool" in out and "'avg' or 'max'" in out
    assert "dissect.extra" in out and "valid keys" in out
    res = _invoke(
        tmp_path, TINY_DISSECT, "dissect.similarity.p_end=2", "dissect.similarity.lamda=1"
    )
    assert res.exit_code == 2
    assert (
        "dissect.similarity.p_end: soft_wpmi: p_end=2 is not valid; it must be a probability "
        "in (0, 1]"
    ) in res.output
    assert "dissect.similarity.lamda" in res.output and "did you mean 'lam'" in res.output


def test_runtime_config_errors_exit_2(tmp_path):
    res = _invoke(tmp_path, TINY_DISSECT, "dissect.layers=[features.1, classifer.2]")
    assert res.exit_code == 2 and "dissect.layers.1" in res.output and "'classifer.2'" in res.output
    assert "classifier.2" in res.output  # the valid layers are listed
    res = _invoke(tmp_path, TINY_DISSECT, "dissect.similarity.top_k=500")
    assert (
        res.exit_code == 2
        and "dissect.similarity.top_k" in res.output
        and "150 probe images" in res.output
    )
    res = _invoke(tmp_path, TINY_DISSECT, "dissect.concepts={name: list, items: [3, dog]}")
    assert res.exit_code == 2 and "dissect.concepts" in res.output and "dog" in res.output
    res = _invoke(tmp_path, TINY_DISSECT.split("dissect:")[0])
    assert res.exit_code == 2 and "no 'dissect:' section" in res.output


def test_config_validation_in_python():
    with pytest.raises(ConfigError) as exc:
        load_config(
            None, ["dissect.layers=[]", "dissect.top=0", "dissect.scorer.prompt=no placeholder"]
        )
    paths = {p for p, _ in exc.value.problems}
    assert {"dissect.layers", "dissect.top", "dissect.scorer.prompt"} <= paths
    cfg = load_config(None, ["dissect.layers=classifier.2", "dissect.similarity.top_k=50"])
    assert cfg.dissect.layers == ["classifier.2"] and cfg.dissect.similarity.name == "soft_wpmi"
    assert cfg.dissect.similarity.params == {"top_k": 50} and cfg.dissect.scorer.name == "clip"


def test_list_json_has_dissect_components():
    res = cli.invoke(app, ["list", "--json"])
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert {"datasets", "models", "explainers", "metrics"} <= set(data)
    d = data["dissect"]
    assert {e["name"] for e in d["similarities"]} == {
        "soft_wpmi",
        "wpmi",
        "rank_reorder",
        "cos_similarity_cubed",
        "cos_similarity",
    }
    assert {e["name"] for e in d["scorers"]} == {"clip", "open_clip", "annotations"}
    assert {"words", "imagenet_classes", "dataset_classes", "annotations", "file", "list"} <= {
        e["name"] for e in d["concept_sets"]
    }
    assert all(e["description"] for group in d.values() for e in group)
    human = cli.invoke(app, ["list"])
    assert "dissect similarities:" in human.output and "soft_wpmi" in human.output
