"""The bad-input catalogue: every bad input is one line on stderr and exit code 2, with no traceback, raised before
any model loads where the input allows it, and a previous run in --out stays byte for byte as it was."""

import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save as safetensors_bytes

from nte_eval.attacks import ATTACKS, Attack
from nte_eval.cli import main
from nte_eval.encoders import NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.evaluate.checks import attacks_stay_in_range, run_checks
from nte_eval.evaluate.inputs import load_suite_data
from nte_eval.evaluate.run_folder import example_file, save_examples
from nte_eval.evaluate.store import COLUMNS
from nte_eval.evaluate.suite import load_suite, parse_suite
from nte_eval.evaluate.suite_file import read_yaml
from nte_eval.models.load import load_model
from nte_eval.runner import run_suite

HEAD = "name: tiny\ndata: {source: digits, split: test, limit: 16}\n"
GOOD = HEAD + "designated: zoo:vit_null\nmodels: [zoo:mlp_linear]\nencoders: [{type: nte, psnr: 30}]\n"
R18 = "factory: 'torchvision.models:resnet18', kwargs: {num_classes: 10}, input_size: [3, 32, 32]"
#: Two keys, one of them resnet18's: 101 of its 122 are missing, one is unexpected.
PARTIAL = safetensors_bytes({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(10, 512)})
UNWRITABLE = "/proc/nte-eval-out"  # no folder can be made in /proc, not even by root
NO_DEFAULT = """
from nte_eval.attacks import Attack


class NoDefault(Attack):
    name = "no_default"
    sigma: float

    def run(self, x):
        return x
"""


@dataclass(frozen=True)
class Bad:
    """One bad input: its command line ({out}: a copy of the good run, {tmp}: the case's folder), the files it writes
    into {tmp}, a phrase its one-line error must hold, and the subfolder of {tmp} it runs in."""

    id: str
    args: tuple[str, ...]
    match: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    cwd: str = ""


def run(*extra: str) -> tuple[str, ...]:
    return "run", "{tmp}/suite.yaml", "--out", "{out}", "--quiet", *extra


def encode(*extra: str, out: str = "{out}", data: str = "digits") -> tuple[str, ...]:
    return "encode", "--model", "zoo:vit_null", "--data", data, "--out", out, "--key", "k", *extra


def suite(id: str, text: str | bytes, match: str, overwrite: bool = True, cwd: str = "", **files: str) -> Bad:
    """A bad suite, run with --overwrite: the previous run must survive even that."""
    return Bad(id, run(*(["--overwrite"] if overwrite else [])), match, {"suite.yaml": text, **files}, cwd)


def args(id: str, command: tuple[str, ...], match: str) -> Bad:
    return Bad(id, command, match, {"suite.yaml": GOOD})


#: A CUDA device this machine lacks: any without CUDA, else the one after its last GPU.
NO_GPU = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
CASES = [
    args("run --device banana", run("--device", "banana"), "'banana' is not a device"),
    args("run --device mps", run("--device", "mps"), "mps is not supported"),
    args("run --device cuda (no such GPU)", run("--device", NO_GPU), "CUDA GPU"),
    args("encode --device banana", encode("--device", "banana"), "'banana' is not a device"),
    args("encode --device mps", encode("--device", "mps"), "mps is not supported"),
    args("encode --device cuda (no such GPU)", encode("--device", NO_GPU), "CUDA GPU"),
    args("run --out a file", ("run", "{tmp}/suite.yaml", "--out", "{tmp}/suite.yaml"), "suite.yaml is a file"),
    args("run --out inside a file", ("run", "{tmp}/suite.yaml", "--out", "{tmp}/suite.yaml/o"), "cannot be a folder"),
    args("run --out not writable", ("run", "{tmp}/suite.yaml", "--out", UNWRITABLE), "cannot write in /proc"),
    args("encode --out a file", encode(out="{tmp}/suite.yaml"), "suite.yaml is a file"),
    args("encode --out not writable", encode(out=UNWRITABLE), "cannot write in /proc"),
    args("--batch-size -5", run("--batch-size", "-5"), "argument --batch-size: '-5' is not a positive integer"),
    args("--batch-size 0", run("--batch-size", "0"), "argument --batch-size: '0' is not a positive integer"),
    args("--threads -1", run("--threads", "-1"), "argument --threads: '-1' is not a positive integer"),
    args("--threads 0", run("--threads", "0"), "argument --threads: '0' is not a positive integer"),
    args("--resume --overwrite", run("--resume", "--overwrite"), "--overwrite: not allowed with argument --resume"),
    args("report --margin nan", ("report", "{out}", "--margin", "nan"), "'nan' is not a margin"),
    args("report --margin -50", ("report", "{out}", "--margin", "-50"), "'-50' is not a margin"),
    Bad("encode --limit -1", encode("--limit", "-1", data="{tmp}/imgs"), "argument --limit: '-1' is not a positive "
        "integer", {"imgs/a.png": "image", "imgs/b.png": "image"}),
    Bad("encode --limit 0", encode("--limit", "0", data="{tmp}/imgs"), "argument --limit: '0' is not a positive "
        "integer", {"imgs/a.png": "image"}),
    suite("designated: []", HEAD + "designated: []\nencoders: [{type: nte}]\n", "designated: an empty list"),
    suite("encoder designated: []", HEAD + "designated: zoo:vit_null\nencoders: [{type: nte, designated: []}]\n",
          "encoders[0].designated: an empty list"),
    suite("psnr: []", HEAD + "designated: zoo:vit_null\nencoders: [{type: nte, psnr: []}]\n",
          "encoders[0].psnr: [] sweeps over no values"),
    suite("attack sweep []", HEAD + "designated: zoo:vit_null\nencoders: [{type: nte}]\n"
          "attacks: [{type: jpeg, quality: []}]\n", "attacks[0].quality: [] sweeps over no values"),
    suite("certify psnr: []", GOOD + "certify: {psnr: []}\n", "certify.psnr"),
    suite("tent lr: 5", GOOD + "attacks: [{type: tent, lr: 5}]\n", "attacks[0] attack 'tent': lr: Input should be "
          "less than or equal to 1"),
    suite("noise_finetune epochs: [5, 0]", GOOD + "attacks: [{type: noise_finetune, epochs: [5, 0]}]\n",
          "attacks[0] attack 'noise_finetune': epochs: Input should be greater than or equal to 1"),
    suite("chain of two model attacks", GOOD + "attacks: [{type: chain, steps: [bn_adapt, jpeg, tent]}]\n",
          "steps 0 and 2 both adapt the model; a chain holds at most one model attack"),
    suite("mean: abc", HEAD + "designated: {timm: resnet18, mean: abc}\nencoders: [{type: nte}]\n",
          "designated: mean: 'abc' is not a list of numbers"),
    suite("input_size: [3, 32]", GOOD + "surrogates: [{timm: resnet18, input_size: [3, 32]}]\n",
          "surrogates[0]: input_size: [3, 32] is not [channels, height, width]"),
    suite("not UTF-8", GOOD.encode().replace(b"tiny", b"t\xe9ny"), "not UTF-8 text (byte 0xe9 at offset 7)"),
    suite("duplicate key", GOOD + "seed: 1\nseed: 2\n", "line 7, column 1: duplicate key 'seed' (first at line 6"),
    suite("1.0e9 is a number", HEAD + "designated: zoo:vit_null\nencoders: [{type: nte, psnr: 1.0e9}]\n",
          "encoders[0].psnr: Input should be less than or equal to 100"),
    suite("two models, one name", GOOD.replace("[zoo:mlp_linear]", "[{zoo: mlp_linear, name: m}, "
                                                                   "{zoo: resnet_stem, name: m}]"),
          "models[1]: models[0] is another model named 'm'"),
    suite("one model twice", GOOD.replace("[zoo:mlp_linear]", "[zoo:mlp_linear, zoo:mlp_linear]"),
          "models[1]: 'zoo:mlp_linear' is listed twice (also models[0])"),
    suite("one checkpoint file name in two folders", GOOD + "surrogates: [timm:resnet18@run1/best.safetensors, "
          "timm:resnet18@run2/best.safetensors]\n", "surrogates[1]: surrogates[0] is another model named "
          "'resnet18@best'; give each a distinct `name:` (a mapping: {{timm: NAME, checkpoint: PATH, name: N}})"),
    suite("no public: for attacks that need it", HEAD.replace("{source: digits, split: test, limit: 16}",
                                                              "{source: imagefolder, root: imgs, size: 32}")
          + "designated: zoo:vit_null\nencoders: [{type: nte}]\nattacks: [jpeg, blind_fill, oracle_fill]\n",
          "attacks: 'blind_fill' (knowledge 'method'), 'oracle_fill' (knowledge 'oracle') need public clean images "
          "disjoint from the evaluated ones; set `public:`, e.g. public: {{source: imagefolder, root: path/to/public, "
          "size: 32}}."),
    suite("a fixed-size ViT on 32 px data", GOOD + "surrogates: [{timm: vit_tiny_patch16_224, kwargs: "
          "{num_classes: 10}}]\n", "model timm:vit_tiny_patch16_224 (surrogates[0]) takes only 3x224x224 images, but "
          "the data is 3x32x32 (the input size of zoo:vit_null); if its weights are for 32x32 images, set `kwargs: "
          "{{num_classes: 10, img_size: 32}}` in its spec; else give the models one input size (data.size: 224 suits "
          "timm:vit_tiny_patch16_224).", overwrite=False),
    suite("plugin calls sys.exit", GOOD + "plugins: [quits.py]\n", "'quits.py' called sys.exit(0)",
          **{"quits.py": "import sys\nsys.exit(0)\n"}),
    suite("plugin parameter without default", GOOD + "plugins: [no_default.py]\n",
          "NoDefault: parameter 'sigma' is annotated but has no default", **{"no_default.py": NO_DEFAULT}),
    suite("surrogate_projection.models typo", GOOD + "surrogates: [zoo:vit_null_s1]\n"
          "attacks: [{type: surrogate_projection, models: [zoo:vit_nul_s1]}]\n",
          "surrogate_projection.models: no surrogate 'zoo:vit_nul_s1'"),
    # Run from {tmp}/sub, which holds imgs/ and w.safetensors: the suite's own folder {tmp} does not.
    suite("data.root relative to the suite", HEAD.replace("{source: digits, split: test, limit: 16}",
                                                          "{source: imagefolder, root: imgs, size: 32}")
          + "designated: zoo:vit_null\nencoders: [{type: nte}]\n", "data.root: {tmp}/imgs is not a folder",
          cwd="sub", **{"sub/imgs/a/x.png": "image"}),
    suite("checkpoint relative to the suite", GOOD + "surrogates: [timm:resnet18@w.safetensors]\n",
          "surrogates[0].checkpoint: {tmp}/w.safetensors does not exist", cwd="sub", **{"sub/w.safetensors": ""}),
    suite("seed: ''", GOOD + "seed: ''\n", "seed: the NTE key is empty"),
    suite("factory without first_layer", GOOD + "surrogates: [{" + R18 + "}]\n", "surrogates[0]: factory "
          "'torchvision.models:resnet18': first_layer: give the path of the model's first Conv2d/Linear"),
    suite("factory cannot be imported", GOOD + "surrogates: [{factory: 'no_such_package_xyz.nets:build', "
          "first_layer: conv1}]\n", "factory 'no_such_package_xyz.nets:build': cannot import module "
          "'no_such_package_xyz.nets' (ModuleNotFoundError: No module named 'no_such_package_xyz')", overwrite=False),
    suite("factory returns no nn.Module", GOOD + "surrogates: [{factory: 'collections:OrderedDict', first_layer: "
          "conv1}]\n", "factory 'collections:OrderedDict' returned OrderedDict, not a torch.nn.Module",
          overwrite=False),
    suite("factory raises", GOOD + "surrogates: [{factory: 'torchvision.models:resnet18', kwargs: {num_clases: 10}, "
          "first_layer: conv1}]\n", "factory 'torchvision.models:resnet18' raised TypeError when called with kwargs "
          "{{'num_clases': 10}}: ResNet.__init__() got an unexpected keyword argument 'num_clases'", overwrite=False),
    suite("factory first_layer not linear", GOOD + "surrogates: [{" + R18 + ", first_layer: bn1}]\n",
          "torchvision.models:resnet18: first layer 'bn1' is BatchNorm2d, not a linear layer", overwrite=False),
    suite("checkpoint keys do not match", GOOD + "surrogates: [{" + R18 + ", first_layer: conv1, checkpoint: "
          "partial.safetensors}]\n", "resnet18@partial: checkpoint {tmp}/partial.safetensors does not fit the "
          "architecture: 101 missing keys (of the model's 122), 1 unexpected (of the checkpoint's 2); missing e.g. "
          "'bn1.weight', unexpected e.g. 'head.weight'.", overwrite=False, **{"partial.safetensors": PARTIAL}),
    args("run --key-file missing", run("--key-file", "{tmp}/no.key"), "no.key: no such file"),
    Bad("run --key-file empty", run("--key-file", "{tmp}/empty.key"), "the key from --key-file {tmp}/empty.key is "
        "empty", {"suite.yaml": GOOD, "empty.key": "\n"}),
    args("run --key-env unset", run("--key-env", "NTE_EVAL_TEST_UNSET_KEY"), "set the environment variable "
         "NTE_EVAL_TEST_UNSET_KEY"),
    suite("select: k=1000000", GOOD.replace("psnr: 30", "psnr: 30, select: k=1000000"),
          "zoo:vit_null's first layer in the patch view has 48 per patch", overwrite=False),
]


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """One finished tiny run, and its files' checksums."""
    root = tmp_path_factory.mktemp("good")
    (root / "suite.yaml").write_text(GOOD)
    assert main(["run", str(root / "suite.yaml"), "--out", str(root / "out"), "--quiet"]) == 0
    return root / "out", checksums(root / "out")


def write_files(tmp: Path, files: dict[str, str | bytes]) -> None:
    """The case's files; "image" stands for a small PNG."""
    for name, content in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "image":
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())


def run_case(case: Bad, good: Path, tmp: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Run one bad input against a copy of the good run in ``tmp``; the process and that copy."""
    out = tmp / "out"
    shutil.copytree(good, out)
    write_files(tmp, case.files)
    command = [a.format(out=out, tmp=tmp) for a in case.args]
    return subprocess.run([sys.executable, "-m", "nte_eval.cli", *command], capture_output=True, text=True,
                          cwd=tmp / case.cwd, timeout=300), out


@pytest.fixture(scope="module")
def outcomes(good_run, tmp_path_factory) -> dict[str, tuple[str, subprocess.CompletedProcess, Path]]:
    """Every bad input run once, two at a time (a process mostly imports torch, ~2 s, before it stops); by id: the
    phrase its error must hold, the process, and its copy of the good run."""
    folders = [tmp_path_factory.mktemp("bad") for _ in CASES]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(run_case, CASES, [good_run[0]] * len(CASES), folders))
    return {case.id: (case.match.format(tmp=tmp), proc, out)
            for case, tmp, (proc, out) in zip(CASES, folders, done, strict=True)}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the unwritable --out is a path under /proc")
@pytest.mark.parametrize("case", [c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_the_run(case, outcomes, good_run):
    match, proc, out = outcomes[case]
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("nte-eval: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and proc.stdout == ""
    assert match in lines[0]
    assert checksums(out) == good_run[1]


def test_scientific_notation_is_a_number_and_a_repeated_key_an_error(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("a: 1e9\nb: 1.0e9\nc: 3e-3\nd: -2.5E+3\ne: .5e1\nf: '1e9'\ng: 1_000\nh: 1.5\ni: e9\n"
                    "base: &b {x: 1, y: 2}\nmerged: {<<: *b, y: 3}\n")
    data = read_yaml(path)
    assert [data[k] for k in "abcdeghi"] == [1e9, 1e9, 3e-3, -2500.0, 5.0, 1000, 1.5, "e9"]
    assert data["f"] == "1e9" and data["merged"] == {"x": 1, "y": 3}  # quoted: a string; a merge may override
    path.write_text("encoders:\n  - {type: nte,\n     psnr: 30,\n     psnr: 40}\n")
    with pytest.raises(NTEError, match=r"line 4, column 6: duplicate key 'psnr' \(first at line 3, column 6\)"):
        read_yaml(path)


def test_an_annotated_parameter_without_a_default_fails_at_class_definition():
    with pytest.raises(NTEError, match="Blur: parameter 'radius' is annotated but has no default"):
        class Blur(Attack, register=False):
            name = "test_blur"
            radius: float

            def run(self, x: torch.Tensor) -> torch.Tensor:
                return x


def test_relative_paths_are_read_from_the_suite_folder(tmp_path, monkeypatch):
    folder = (tmp_path / "suites").resolve()
    for name in ("cat/a.png", "dog/b.png"):
        write_files(folder / "imgs", {name: "image"})
    write_files(folder, {"w.safetensors": "", "my_plugin.py": "LOADED = True\n"})
    (folder / "suite.yaml").write_text(
        "name: rel\ndata: {source: imagefolder, root: imgs, size: 32}\nplugins: [my_plugin.py]\n"
        "designated: zoo:vit_null\nsurrogates: [timm:resnet18@w.safetensors, {timm: resnet18, checkpoint: "
        "w.safetensors, name: r}]\nencoders: [{type: nte}]\n")
    monkeypatch.chdir(tmp_path)  # the working folder is not the suite's
    suite = load_suite("suites/suite.yaml")
    suite.check_files("suite.yaml")  # every file is there, in the suite's folder
    assert suite.path("imgs") == str(folder / "imgs") and suite.path("/abs") == "/abs"
    assert suite.model_spec(suite.surrogates[0]) == f"timm:resnet18@{folder / 'w.safetensors'}"
    assert suite.model_spec(suite.surrogates[1])["checkpoint"] == str(folder / "w.safetensors")
    assert suite.model_spec("zoo:vit_null") == "zoo:vit_null" and suite.surrogates[0] == "timm:resnet18@w.safetensors"
    data = load_suite_data(suite, {"zoo:vit_null": load_model("zoo:vit_null")})
    assert data.images.shape == (2, 3, 32, 32) and data.class_names == ["cat", "dog"]


def test_select_k_beyond_the_dimension_fails_at_encoder_construction():
    handle = load_model("zoo:resnet_nullstem")  # an overlapping stem: the operator view's polyphase blocks
    assert NTEEncoder(handle, select="k=48").params()["select"] == "k=48"
    with pytest.raises(NTEError, match="k=49 asks for more directions than exist: .* operator view has 48 per "
                                       "polyphase block; choose k <= 48"):
        NTEEncoder(handle, select="k=49")


def test_an_attack_leaving_0_1_on_storable_images_is_one_warning(tmp_path):
    """Storable NTEs in [0, 1]: an attack that leaves the range is listed (with its range); on float NTEs that leave
    [0, 1] themselves, the same output is not held against the attack."""
    boxed, floats = '{"box":"project","designated":"d","psnr":30.0}', '{"box":"none","designated":"d","psnr":30.0}'
    inside = torch.full((3, 1, 4, 4), 0.5)
    rows = []
    for params, released in ((boxed, inside), (floats, inside + 1)):
        save_examples(example_file(tmp_path, "nte", params), released)
        for attack, attack_params, output in (("identity", "{}", released),
                                              ("gaussian_noise", '{"seed":0,"sigma":0.05}', released + 0.6)):
            save_examples(example_file(tmp_path, "nte", params, attack, attack_params), output)
            rows.append(("nte", params, attack, attack_params, "m", "unauthorized", "accuracy", 0.5, 3))
    results = pd.DataFrame(rows, columns=COLUMNS)
    warnings = attacks_stay_in_range(results, tmp_path)
    assert len(warnings) == 1 and warnings[0]["check"] == "range"
    assert "1 attack setting(s)" in warnings[0]["message"] and "gaussian_noise sigma=0.05 [1.100, 1.100]" in \
        warnings[0]["message"]
    assert [w["check"] for w in run_checks(results, tmp_path)] == ["oracle_fill", "range"]
    save_examples(example_file(tmp_path, "nte", boxed, "gaussian_noise", '{"seed":0,"sigma":0.05}'), inside)
    assert attacks_stay_in_range(results, tmp_path) == []


class Brighten(Attack, register=False):
    """Adds 0.5 to every pixel, without clamping (test attack)."""

    name = "test_brighten"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.5


def test_a_run_lists_an_out_of_range_attack_in_warnings_json(tmp_path):
    """Storable NTEs, an attack that leaves [0, 1]: warnings.json (and so the report) lists it."""
    storable = {"type": "nte", "box": "project", "quantize": True}
    with ATTACKS.scope(Brighten):
        suite = parse_suite({"name": "range", "data": {"source": "digits", "split": "test", "limit": 8},
                             "designated": "zoo:vit_null", "encoders": [storable], "attacks": ["test_brighten"]})
        run_suite(suite, tmp_path, progress=False, log=lambda _: None)
    (warning,) = [w for w in json.loads((tmp_path / "warnings.json").read_text()) if w["check"] == "range"]
    assert "1 attack setting(s)" in warning["message"] and "test_brighten [0.500, 1.500]" in warning["message"]


class Quits(Attack, register=False):
    """Calls sys.exit in the middle of a run (test attack)."""

    name = "test_quits"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        sys.exit(0)


def test_a_plugin_calling_sys_exit_mid_run_is_an_error(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(GOOD + "attacks: [test_quits]\n")
    with ATTACKS.scope(Quits):
        assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "called sys.exit(0); the command did not finish" in capsys.readouterr().err.splitlines()[-1]


def test_encode_says_when_it_resizes(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(folder / "wide.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "fits.png")
    assert main(["encode", "--model", "zoo:vit_null", "--data", str(folder), "--out", str(tmp_path / "o"),
                 "--key", "a-long-random-key-0123456789"]) == 0
    note = json.loads((tmp_path / "o" / "manifest.json").read_text())["note"]
    assert "1 of 2 images were resized and centre-cropped to 32x32" in note and note in capsys.readouterr().out
