"""Model attacks: bn_adapt, tent, noise_finetune and self_train adapt unauthorized zoo models to NTEs of digits; a run
with them records "not applicable" and failed adaptations per cell and ends in the adaptation page."""

import json

import pandas as pd
import pytest
import torch
from torch import nn

from nte_eval.attacks import ATTACKS, AttackContext, build_attack
from nte_eval.attacks.model.base import Diverged, ModelAttack, NotApplicable, apply_changes, changed
from nte_eval.attacks.model.normalization import BNAdapt
from nte_eval.attacks.model.training import descend, entropy
from nte_eval.cli import main
from nte_eval.data.images import load_digits
from nte_eval.encoders import NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.evaluate.merge import read_plan
from nte_eval.evaluate.run_folder import MANIFEST, RESULTS, SHARDS
from nte_eval.evaluate.suite import parse_suite
from nte_eval.models.handle import ModelHandle
from nte_eval.models.load import load_model
from nte_eval.reports.adaptation import adaptation_lines
from nte_eval.reports.pdf import write_report


@pytest.fixture(scope="module")
def setting():
    """NTEs at 10 dB for zoo:vit_null of 200 test digits (also the released corpus), 600 public training digits."""
    designated = load_model("zoo:vit_null")
    encoder = NTEEncoder(designated, psnr=10.0)
    test, public = load_digits("test", limit=200), load_digits("train", limit=600)
    ntes = encoder.encode(test.images, key=7).images
    context = AttackContext(seed=3, public=public, ntes=ntes, encoder=encoder.public_settings(), designated=designated)
    return test, ntes, context


def accuracy(handle, x, labels) -> float:
    return float((handle.logits(x).argmax(1) == labels).float().mean())


def test_bn_adapt_changes_a_batchnorm_models_predictions_and_leaves_the_original(setting):
    test, ntes, context = setting
    model = load_model("zoo:resnet_stem")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    adapted = build_attack("bn_adapt").fit(context).adapted(model)
    assert not torch.equal(adapted.logits(ntes).argmax(1), model.logits(ntes).argmax(1))
    assert all(torch.equal(v, model.module.state_dict()[k]) for k, v in before.items())  # a copy was adapted
    changed = [k for k, v in adapted.module.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all("running_" in k or "num_batches" in k for k in changed)  # statistics only
    with pytest.raises(NotApplicable, match="no BatchNorm layer"):
        build_attack("bn_adapt").fit(context).adapted(load_model("zoo:vit_wide"))


@pytest.mark.parametrize("name", ["vit_wide", "resnet_stem"])
def test_tent_lowers_the_entropy_on_its_corpus_and_is_seeded(setting, name):
    _, ntes, context = setting
    model = load_model(f"zoo:{name}")
    tent = build_attack({"type": "tent", "epochs": 3}).fit(context)
    adapted = tent.adapted(model)
    assert entropy(adapted.logits(ntes)).mean() < entropy(model.logits(ntes)).mean() - 0.05
    again = build_attack({"type": "tent", "epochs": 3}).fit(context).adapted(model)
    assert all(torch.equal(v, again.module.state_dict()[k]) for k, v in adapted.module.state_dict().items())
    changed = {k for k, v in adapted.module.state_dict().items() if not torch.equal(v, model.module.state_dict()[k])}
    assert changed and all(k.endswith(("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))
                           for k in changed)
    assert not any("head" in k or "conv" in k or "qkv" in k for k in changed if k.endswith("weight"))


def test_tent_is_not_applicable_without_normalisation_layers(setting):
    with pytest.raises(NotApplicable, match="no normalisation layer"):
        build_attack("tent").fit(setting[2]).adapted(load_model("zoo:mlp_linear"))


@pytest.mark.parametrize("name, gain", [("resnet_stem", 0.1), ("vit_wide", 0.0), ("convnext_patchify", 0.1),
                                        ("mlp_linear", 0.0)])
def test_noise_finetune_at_oracle_level_makes_unauthorized_models_at_least_as_accurate(setting, name, gain):
    """At least as accurate on the NTEs as before for every model; the two the NTEs hurt most gain 10 points."""
    test, ntes, context = setting
    model = load_model(f"zoo:{name}")
    attack = build_attack({"type": "noise_finetune", "subspace": "oracle", "epochs": 2}).fit(context)
    assert attack.knowledge == "oracle"
    adapted = attack.adapted(model)
    assert accuracy(adapted, ntes, test.labels) >= accuracy(model, ntes, test.labels) + gain


def test_noise_finetune_with_the_blind_subspace_restores_a_convolutional_model(setting):
    test, ntes, context = setting
    model = load_model("zoo:resnet_stem")
    attack = build_attack({"type": "noise_finetune", "epochs": 2}).fit(context)
    assert attack.knowledge == "method"
    assert accuracy(attack.adapted(model), ntes, test.labels) >= accuracy(model, ntes, test.labels) + 0.1


def test_recalibration_pools_exact_statistics_and_restored_models_reread_their_first_layer():
    """AdaBN's statistics are the corpus's moments whatever the batches (65 images: no batch of one for a
    BatchNorm1d); a model restored from its saved changes is the adapted one, first layer included (a padded stem's
    weight is a copy of the module's)."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 2, 2)), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    handle = ModelHandle.from_module(net, "0", input_size=(3, 16, 16), class_names=list("0123456789"), spec="pad")
    corpus = torch.rand(65, 3, 16, 16, generator=gen)
    context = AttackContext(seed=1, ntes=corpus, knowledge="method")
    adapted = build_attack("bn_adapt").fit(context).adapted(handle)
    first = net[0](handle.normalize(corpus)).transpose(0, 1).flatten(1)
    assert torch.allclose(adapted.module[1].running_mean, first.mean(1), atol=1e-5)
    assert torch.allclose(adapted.module[1].running_var, first.var(1), rtol=1e-4)
    trained = build_attack({"type": "self_train", "epochs": 2, "lr": 1e-2, "threshold": 0.0}).fit(context)
    fresh = trained.adapted(handle)
    restored = apply_changes(handle, changed(handle.module.state_dict(), fresh.module))
    x = torch.rand(4, 3, 16, 16, generator=gen)
    assert not torch.equal(fresh.first_layer_response(x), handle.first_layer_response(x))
    assert torch.equal(fresh.first_layer_response(x), restored.first_layer_response(x))
    assert torch.equal(fresh.logits(x), restored.logits(x))


def test_a_non_finite_loss_stops_the_adaptation_with_its_epoch():
    layer = nn.Linear(2, 2)
    with pytest.raises(Diverged, match="the loss became nan in epoch 1 of 3"):
        descend(layer, list(layer.parameters()), lambda idx, epoch: layer.weight.sum() * float("nan"), 8, 4, 3, 0.1,
                torch.Generator().manual_seed(0), "test")


def test_noise_finetune_needs_labelled_public_images(setting):
    _, _, context = setting
    public = context.public.subset(slice(0, 50))
    public.labels = torch.full_like(public.labels, -1)
    unlabelled = AttackContext(seed=3, public=public, ntes=context.ntes, encoder=context.encoder,
                               designated=context.designated)
    attack = build_attack("noise_finetune").fit(unlabelled)
    with pytest.raises(NotApplicable, match="no labels"):
        attack.adapted(load_model("zoo:resnet_stem"))


def test_self_train_adapts_every_parameter_seeded(setting):
    _, ntes, context = setting
    model = load_model("zoo:vit_wide")
    one = build_attack({"type": "self_train", "epochs": 1, "lr": 1e-3}).fit(context).adapted(model)
    two = build_attack({"type": "self_train", "epochs": 1, "lr": 1e-3}).fit(context).adapted(model)
    assert torch.equal(one.logits(ntes), two.logits(ntes))
    assert not torch.equal(one.logits(ntes), model.logits(ntes))


def test_a_chain_holds_one_model_attack_and_text_suites_refuse_them():
    chain = build_attack({"type": "chain", "steps": ["jpeg", "tent"]})
    assert chain.model_attack is not None and chain.knowledge == "method"
    with pytest.raises(NTEError, match="steps 0 and 1 both adapt the model"):
        build_attack({"type": "chain", "steps": ["bn_adapt", "tent"]})
    with pytest.raises(NTEError, match="'tent' works on image"):
        parse_suite({"name": "t", "data": {"source": "glue_tsv", "task": "cola", "path": "x.tsv"},
                     "designated": "hf-text:x", "encoders": [{"type": "nte_tokens"}], "attacks": ["tent"]})


class Explodes(ModelAttack, register=False):
    """Test plugin: an adaptation that diverges (its first weight becomes NaN)."""

    name = "explodes"

    def adapt(self, handle, generator):
        next(handle.module.parameters()).data.fill_(float("nan"))


def test_a_run_records_not_applicable_and_failed_adaptations_and_shows_them(tmp_path, monkeypatch):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: adapt\ndata: {source: digits, split: test, limit: 60}\n"
                     "public: {source: digits, split: train, limit: 300}\ndesignated: zoo:vit_null\n"
                     "models: [zoo:resnet_stem, zoo:mlp_linear]\nencoders: [{type: nte, psnr: 10}]\n"
                     "attacks: [identity, bn_adapt, explodes, {type: chain, steps: [blind_fill, bn_adapt]}]\n")
    out = tmp_path / "o"
    with ATTACKS.scope(Explodes):
        assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
        results = pd.read_csv(out / RESULTS)
        manifest = json.loads((out / MANIFEST).read_text())
        pages = write_report(out).pages
        # a cell computed again (here: its file lost) restores its adapted models from fits/, never adapts again
        for item in read_plan(out)["items"]:
            if item["cell"][2] == "bn_adapt":
                for path in (out / SHARDS).glob(f"{item['id']}.*"):
                    path.unlink()
        monkeypatch.setattr(BNAdapt, "adapt", lambda *_: pytest.fail("adapted again instead of restored"))
        assert main(["run", str(suite), "--out", str(out), "--quiet", "--resume"]) == 0
    pd.testing.assert_frame_equal(results, pd.read_csv(out / RESULTS))
    acc = results[(results.metric == "accuracy")].set_index(["attack", "model"]).value
    assert ("bn_adapt", "zoo:mlp_linear") not in acc.index  # never the no-attack numbers in its place
    assert acc["bn_adapt", "zoo:resnet_stem"] != acc["identity", "zoo:resnet_stem"]
    assert acc["bn_adapt", "zoo:vit_null"] == acc["identity", "zoo:vit_null"]  # the designated model is not adapted
    skipped = results[results.metric.isin(["not_applicable", "adaptation_failed"])]
    assert set(zip(skipped.attack, skipped.model, skipped.metric, strict=True)) == {
        ("bn_adapt", "zoo:mlp_linear", "not_applicable"), ("chain", "zoo:mlp_linear", "not_applicable"),
        ("explodes", "zoo:resnet_stem", "adaptation_failed"), ("explodes", "zoo:mlp_linear", "adaptation_failed")}
    reasons = {(e["cell"][2], e["model"]): e["reason"] for e in manifest["adaptation"]}
    assert "no BatchNorm layer" in reasons["bn_adapt", "zoo:mlp_linear"]
    assert "non-finite" in reasons["explodes", "zoo:resnet_stem"]
    assert {a["type"]: a["target"] for a in manifest["attacks"]} == {
        "identity": "input", "bn_adapt": "model", "explodes": "model", "chain": "chain"}
    assert "adaptation" in pages
    lines = "\n".join(adaptation_lines(results, manifest, "accuracy"))
    assert "bn_adapt [method]" in lines and "n/a [1]" in lines and "failed [" in lines
    assert "best chain (input + model)" in lines and "no BatchNorm layer" in lines and "non-finite" in lines
