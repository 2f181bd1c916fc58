"""`seeds: [...]`: every encoder setting encoded once per NTE key (cells tagged key=0, 1, ...), each key's cells the
same as a run with that key alone, the report's spread over keys; bad `seeds` are refused."""

import json

import pandas as pd
import pytest
import yaml

from nte_eval.cli import main

SUITE = {"name": "seeds", "data": {"source": "digits", "split": "test", "limit": 30},
         "public": {"source": "digits", "split": "train"}, "designated": "zoo:vit_null", "models": ["zoo:resnet_stem"],
         "encoders": [{"type": "nte", "psnr": 0}], "attacks": ["identity", {"type": "gaussian_blur", "sigma": 1.0}]}


def _run(tmp_path, name, **changes) -> int:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **changes}))
    return main(["run", str(path), "--out", str(tmp_path / name), "--quiet", "--threads", "1"])


def test_each_key_gives_its_own_cells_and_the_report_their_spread(tmp_path):
    certify = {"fidelity": True, "degradation": False, "lipschitz": ["local"], "psnr": [0], "samples": 20}
    assert _run(tmp_path, "keys", seeds=[3, 11], certify=certify) == 0
    assert _run(tmp_path, "eleven", seed=11) == 0
    keys = pd.read_csv(tmp_path / "keys" / "results.csv")
    certified = pd.read_csv(tmp_path / "keys" / "certificates.csv").encoder_params.map(json.loads)
    assert set(certified.map(lambda p: p["key"])) == {0}  # certified with the first key, and tagged so
    keys = keys[keys.attack != "certify"]
    alone = pd.read_csv(tmp_path / "eleven" / "results.csv")
    params = keys.encoder_params.map(json.loads)
    assert sorted(params.map(lambda p: p["key"]).unique()) == [0, 1]
    # the attackers' own randomness (their probe, their fit subsets) comes from the run's first key, the same for
    # every key's cells: all but the probe's score equal the run with that key alone
    second = keys[(params.map(lambda p: p["key"]) == 1) & (keys.metric != "probe_psnr")]
    alone = alone[alone.metric != "probe_psnr"]
    pd.testing.assert_frame_equal(second.drop(columns="encoder_params").reset_index(drop=True),
                                  alone.drop(columns="encoder_params").reset_index(drop=True))
    change = [keys[(params.map(lambda p: p["key"]) == k) & (keys.metric == "logit_change")].value.to_numpy()
              for k in (0, 1)]
    assert len(change[0]) == len(change[1]) > 0 and (abs(change[0] - change[1]) > 1e-6).any()  # other NTEs
    manifest = json.loads((tmp_path / "keys" / "manifest.json").read_text())
    assert len(manifest["key_fingerprints"]) == 2 and "seeds" not in manifest["config"]
    assert "11" not in json.dumps(manifest["config"])  # no key in the files
    summary = (tmp_path / "keys" / "summary.md").read_text()
    assert "Spread over the NTE keys" in summary
    ident = keys[(keys.attack == "identity") & (keys.metric == "accuracy") & (keys.model == "zoo:resnet_stem")]
    mean = round(100 * ident.value.mean(), 1)
    row = next(line for line in summary.splitlines() if line.startswith("| zoo:vit_null | nte 0 dB | zoo:resnet_stem "
                                                                          "| no attack | 2 |"))
    assert f"| {mean:.1f} |" in row


@pytest.mark.parametrize(("changes", "message"), [
    ({"seeds": []}, "seeds: an empty list"),
    ({"seeds": [4, 4]}, "the key 4 appears more than once"),
    ({"seeds": [1, 2], "seed": 1}, "seed and seeds: give one key"),
])
def test_bad_seeds_are_refused(tmp_path, capsys, changes, message):
    assert _run(tmp_path, "bad", **changes) == 2
    assert message in capsys.readouterr().err


def test_a_key_file_with_seeds_is_refused(tmp_path, capsys):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "seeds": [1, 2]}))
    (tmp_path / "key.txt").write_text("a secret key\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--key-file", str(tmp_path / "key.txt")]) == 2
    assert "--key-file/--key-env give one NTE key, but the suite lists several" in capsys.readouterr().err
