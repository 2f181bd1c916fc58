"""Vision-language models (``hf-vlm:PATH``) and the MMBench loader, on tiny random-init models saved to tmp folders.

Every tower sees 32 x 32 images through a 4 x 4 patch embedding with 32 output channels: the pixel operator is
32 x 48, so it has an exact 16-dimensional null space per patch and NTEs leave the designated tower unchanged.
``qwen2_vl_48`` is the qwen2_vl model with a processor for 48 x 48 images (a tower whose size is not the data's).
The llava_clip and qwen2_vl folders are saved as the example template says (the whole processor:
processor_config.json, no preprocessor_config.json); the others hold the image processor and tokenizer separately.
"""

import base64
import csv
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from nte_eval.data.mmbench import load_mmbench_tsv  # noqa: E402
from nte_eval.data.tsv import read_tsv  # noqa: E402
from nte_eval.encoders import NTEEncoder  # noqa: E402
from nte_eval.errors import NTEError  # noqa: E402
from nte_eval.models.load import load_model  # noqa: E402

SIZE, PATCH, HIDDEN = 32, 4, 32
WORDS = ["[PAD]", "[UNK]", "<s>", "</s>", "<image>", "<vs>", "<ve>", "<video>", "<img>", "</img>", "A", "B", "C",
         "D", "Answer", ":", ".", "?", "What", "colour", "is", "the", "shape", "red", "blue", "green", "circle",
         "square", "Look", "at", "picture", "Which", "one", "fits"]
ID = {w: i for i, w in enumerate(WORDS)}
TEXT = {"vocab_size": len(WORDS), "hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "pad_token_id": ID["[PAD]"], "bos_token_id": ID["<s>"], "eos_token_id": ID["</s>"]}
TOWER = {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
         "image_size": SIZE, "patch_size": PATCH}
CLIP_STATS = {"image_mean": [0.481, 0.458, 0.408], "image_std": [0.269, 0.261, 0.276]}
HALF_STATS = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
QWEN_VISION = {"patch_size": PATCH, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_heads": 2,
               "in_channels": 3}
QWEN_TEXT = {**TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}}
QWEN_IDS = {"image_token_id": ID["<image>"], "video_token_id": ID["<video>"], "vision_start_token_id": ID["<vs>"],
            "vision_end_token_id": ID["<ve>"]}
QWEN_PROCESSOR = {"patch_size": PATCH, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": SIZE * SIZE,
                  "max_pixels": SIZE * SIZE, **CLIP_STATS}


def llava_clip():
    cfg = transformers.LlavaConfig(vision_config=transformers.CLIPVisionConfig(**TOWER),
                                   text_config=transformers.LlamaConfig(**TEXT), image_token_index=ID["<image>"],
                                   vision_feature_layer=-1, vision_feature_select_strategy="default")
    return transformers.LlavaForConditionalGeneration(cfg), transformers.CLIPImageProcessor(**CLIP_STATS)


def llava_siglip():
    cfg = transformers.LlavaConfig(vision_config=transformers.SiglipVisionConfig(**TOWER),
                                   text_config=transformers.LlamaConfig(**TEXT), image_token_index=ID["<image>"],
                                   vision_feature_layer=-1, vision_feature_select_strategy="full")
    return transformers.LlavaForConditionalGeneration(cfg), transformers.SiglipImageProcessor(**HALF_STATS)


def internvl():
    cfg = transformers.InternVLConfig(vision_config=transformers.InternVLVisionConfig(**TOWER),
                                      text_config=transformers.Qwen2Config(**TEXT), image_token_id=ID["<image>"])
    stats = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    return transformers.InternVLForConditionalGeneration(cfg), transformers.GotOcr2ImageProcessor(**stats)


def qwen2_vl():
    vision = {**QWEN_VISION, "depth": 1, "embed_dim": HIDDEN, "hidden_size": HIDDEN, "mlp_ratio": 2}
    cfg = transformers.Qwen2VLConfig(vision_config=vision, text_config=QWEN_TEXT, **QWEN_IDS)
    return transformers.Qwen2VLForConditionalGeneration(cfg), transformers.Qwen2VLImageProcessor(**QWEN_PROCESSOR)


def qwen2_5_vl():
    vision = {**QWEN_VISION, "depth": 2, "hidden_size": HIDDEN, "intermediate_size": 64, "out_hidden_size": HIDDEN,
              "window_size": 16, "fullatt_block_indexes": [1]}
    cfg = transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=QWEN_TEXT, **QWEN_IDS)
    return (transformers.Qwen2_5_VLForConditionalGeneration(cfg),
            transformers.Qwen2VLImageProcessor(**QWEN_PROCESSOR))


def llava_processor(image_processor):
    return transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer(), patch_size=PATCH,
                                       vision_feature_select_strategy="default", image_token="<image>")


def qwen_processor(image_processor):
    return transformers.Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer(),
                                         video_processor=transformers.Qwen2VLVideoProcessor())


FAMILIES = {"llava_clip": llava_clip, "llava_siglip": llava_siglip, "internvl": internvl, "qwen2_vl": qwen2_vl,
            "qwen2_5_vl": qwen2_5_vl}
PROCESSORS = {"llava_clip": llava_processor, "qwen2_vl": qwen_processor}  # saved whole, as the template says
OTHER = {"llava_clip": "qwen2_vl", "llava_siglip": "internvl", "internvl": "llava_clip", "qwen2_vl": "llava_siglip",
         "qwen2_5_vl": "llava_clip"}


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(ID, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family -> a saved folder (weights, tokenizer, image processor), plus qwen2_vl_48."""
    out = {}
    for seed, (name, build) in enumerate(FAMILIES.items()):
        torch.manual_seed(seed)
        model, processor = build()
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        if name in PROCESSORS:
            PROCESSORS[name](processor).save_pretrained(folder)
        else:
            processor.save_pretrained(folder)
            tokenizer().save_pretrained(folder)
        out[name] = folder
    out["qwen2_vl_48"] = shutil.copytree(out["qwen2_vl"], tmp_path_factory.mktemp("qwen2_vl_48"), dirs_exist_ok=True)
    pixels = {"min_pixels": 48 * 48, "max_pixels": 48 * 48}
    qwen_processor(transformers.Qwen2VLImageProcessor(**{**QWEN_PROCESSOR, **pixels})).save_pretrained(
        out["qwen2_vl_48"])
    return out


@pytest.fixture(scope="module")
def handles(folders):
    return {name: load_model(f"hf-vlm:{folder}") for name, folder in folders.items()}


QUESTIONS = [
    {"question": "What colour is the shape ?", "hint": "", "options": {"A": "red", "B": "blue", "C": "green"}},
    {"question": "Which shape is the picture ?", "hint": "Look at the picture .",
     "options": {"A": "circle", "B": "square"}},
    {"question": "Which one fits ?", "hint": "", "options": {"A": "red", "B": "blue", "C": "circle", "D": "square"}},
]


def images(n=3, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def patch_module(handle):
    """The model's own patch-embedding module (Qwen: the PatchEmbed that flattens patches, not the adapter)."""
    return handle.module.get_submodule("model.visual.patch_embed" if "qwen" in handle.family else handle.first.path)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_first_layer_is_the_real_patch_embedding(handles, name):
    handle = handles[name].bind(QUESTIONS)
    assert handle.input_size == (3, SIZE, SIZE) and handle.class_names == ["A", "B", "C", "D"]
    assert handle.first.kind == "conv2d" and handle.first.kernel == (PATCH, PATCH) and handle.first.non_overlapping
    assert handle.first.weight.shape == (HIDDEN, 3, PATCH, PATCH)
    x = images()
    store = {}
    hook = patch_module(handle).register_forward_hook(lambda m, i, o: store.__setitem__("out", o.detach().clone()))
    handle.logits(x)
    hook.remove()
    response = handle.first_layer_response(x)  # (B, m, 8, 8)
    if "qwen" in name:  # the model's rows: merge blocks (2 x 2) in row-major block order, as the processor flattens
        g = SIZE // PATCH
        response = response.reshape(3, HIDDEN, g // 2, 2, g // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(-1, HIDDEN)
    torch.testing.assert_close(response, store["out"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_nte_keeps_designated_tower_and_breaks_another(handles, name):
    handle, other = handles[name].bind(QUESTIONS), handles[OTHER[name]]
    x = images()
    encoder = NTEEncoder(handle, psnr=10).fit()
    assert encoder.subspace.describe()["null_dim_per_patch"] == 3 * PATCH * PATCH - HIDDEN  # the exact null space
    nte = encoder.encode(x, key=1).images

    def change(h):
        f0, f1 = h.tower_features(x), h.tower_features(nte)
        return float((f1 - f0).norm() / f0.norm())

    own, foreign = change(handle), change(other)
    print(f"{name}: designated tower change {own:.2e}, {OTHER[name]} tower change {foreign:.3f}")
    assert own <= 1e-4 and foreign > 0.1
    clean, coded = handle.logits(x), handle.logits(nte)
    torch.testing.assert_close(coded, clean, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_pixel_values_match_image_processor(handles, folders, name):
    handle = handles[name]
    x = images(2)
    processor = transformers.Qwen2VLImageProcessor.from_pretrained(folders[name])
    want = processor(images=list(x), do_resize=False, do_rescale=False, return_tensors="pt")
    got = handle.vision_inputs(handle.normalize(x))
    torch.testing.assert_close(got["pixel_values"], want["pixel_values"], rtol=1e-5, atol=1e-5)
    assert torch.equal(got["image_grid_thw"].cpu(), want["image_grid_thw"])


def test_qwen_fixed_size_rule():
    from types import SimpleNamespace

    from nte_eval.models.hf.vlm import _input_size

    config = SimpleNamespace(vision_config=SimpleNamespace(patch_size=14, spatial_merge_size=2))
    released = {"size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}}  # Qwen2-VL's processor
    assert _input_size(config, "qwen2_vl", released) == (3, 448, 448)  # 16 x 16 merged tokens
    assert _input_size(config, "qwen2_5_vl", {"max_pixels": 100_000}) == (3, 308, 308)  # sqrt(max_pixels) caps it
    assert _input_size(config, "qwen2_vl", {"min_pixels": 600 * 600, "max_pixels": 700 * 700}) == (3, 616, 616)
    assert _input_size(config, "qwen2_vl", {"min_pixels": 56 * 56, "max_pixels": 56 * 56}) == (3, 56, 56)


def test_scores_batch_independent_and_resized(handles):
    handle = handles["llava_clip"].bind(QUESTIONS)
    x = images()
    batch = handle.logits(x, [0, 1, 2])
    alone = torch.cat([handle.logits(x[i:i + 1], [i]) for i in range(3)])
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-4)  # left padding does not move a sample's score
    big = torch.nn.functional.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False)
    assert handle.logits(big).shape == (3, 4)  # any size: the handle resizes to the tower's own
    with pytest.raises(NTEError, match="options"):
        handle.bind([{"question": "Which ?", "options": {"A": "red", "E": "blue"}}])
    with pytest.raises(NTEError, match="3 images but 1 bound questions; pass the images' sample positions"):
        handle.bind(QUESTIONS[:1]).logits(x)  # no index: which question goes with which image is unknown
    with pytest.raises(NTEError, match="no bound question for sample 1"):
        handle.bind(QUESTIONS[:1]).logits(x, [0, 1, 2])


def test_first_layer_response_at_the_towers_own_size(handles):
    handle = handles["qwen2_vl_48"]
    assert handle.input_size == (3, 48, 48)  # the Qwen size rule, read off the saved processor
    x = images()
    big = handle.resize(x)
    response = handle.first_layer_response(x)
    assert response.shape == (3, HIDDEN, 48 // PATCH, 48 // PATCH)
    torch.testing.assert_close(response, handle.first_layer_response(big))
    store = {}
    hook = patch_module(handle).register_forward_hook(lambda m, i, o: store.__setitem__("out", o.detach().clone()))
    handle.bind(QUESTIONS).logits(x)
    hook.remove()
    g = 48 // PATCH  # the model's rows: merge blocks (2 x 2) in row-major block order
    want = response.reshape(3, HIDDEN, g // 2, 2, g // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(-1, HIDDEN)
    torch.testing.assert_close(want, store["out"], rtol=1e-4, atol=1e-5)


def test_processor_folder_layouts(folders, handles):
    """The template's folders (AutoProcessor.save_pretrained: processor_config.json only) load like the others."""
    for name in PROCESSORS:
        assert (folders[name] / "processor_config.json").is_file()
        assert not (folders[name] / "preprocessor_config.json").exists()
    assert (folders["llava_siglip"] / "preprocessor_config.json").is_file()
    for name, stats in [("llava_clip", CLIP_STATS), ("qwen2_vl", CLIP_STATS), ("llava_siglip", HALF_STATS)]:
        torch.testing.assert_close(handles[name].mean.flatten(), torch.tensor(stats["image_mean"]))
        torch.testing.assert_close(handles[name].std.flatten(), torch.tensor(stats["image_std"]))


def llava_copy(folders, tmp_path, processor=None):
    """The llava_clip folder with its whole-processor file replaced by a preprocessor_config.json (or none)."""
    folder = shutil.copytree(folders["llava_clip"], tmp_path / "llava")
    (folder / "processor_config.json").unlink()
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.mark.parametrize("settings, mean, std", [
    ({"rescale_factor": 2 / 255, "image_mean": [1.0] * 3, "image_std": [1.0] * 3}, [0.5] * 3, [0.5] * 3),
    ({}, list(transformers.image_utils.OPENAI_CLIP_MEAN), list(transformers.image_utils.OPENAI_CLIP_STD)),
    ({"do_normalize": False, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}, [0.0] * 3, [1.0] * 3),
])
def test_image_processor_settings_map_to_pixels(tmp_path, folders, settings, mean, std):
    """rescale_factor and the class's default mean/std count: (x - mean) / std on [0, 1] pixels is its output."""
    folder = llava_copy(folders, tmp_path, {"image_processor_type": "CLIPImageProcessor", **settings})
    handle = load_model(f"hf-vlm:{folder}")
    torch.testing.assert_close(handle.mean.flatten(), torch.tensor(mean))
    torch.testing.assert_close(handle.std.flatten(), torch.tensor(std))


@pytest.mark.parametrize("case", ["missing", "too_large"])
def test_tokenizer_that_is_not_the_models_is_refused(tmp_path, folders, case):
    folder = shutil.copytree(folders["internvl"], tmp_path / "internvl")
    if case == "missing":  # tokenizer files gone but a class named: transformers builds an empty default tokenizer
        (folder / "tokenizer.json").unlink()
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizer"}))
    else:
        tok = tokenizer()
        tok.add_tokens([f"extra{i}" for i in range(5)])
        tok.save_pretrained(folder)
    with pytest.raises(NTEError, match=rf"tokenizer in {re.escape(str(folder))} has \d+ tokens but the text model's "
                                       rf"vocabulary has {len(WORDS)}.*tokenizer.save_pretrained\(FOLDER\)"):
        load_model(f"hf-vlm:{folder}")


def test_unsupported_and_missing_pieces(tmp_path, folders):
    cfg = json.loads((folders["llava_clip"] / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "idefics3"}))
    with pytest.raises(NTEError, match="no known vision tower.*ModelHandle.from_module"):
        load_model(f"hf-vlm:{bad}")
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NTEError, match="safetensors"):
        load_model(f"hf-vlm:{bad}")
    with pytest.raises(NTEError, match="cannot load the image processor.*AutoProcessor.from_pretrained"):
        load_model(f"hf-vlm:{llava_copy(folders, tmp_path)}")


def png_base64(seed, shape=(40, 56)):
    arr = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "image", "category"]
ROWS = [
    ["10", "What colour is the shape ?", "nan", "red", "blue", "green", "nan", "B", png_base64(0), "colour"],
    ["11", "Which shape is the picture ?", "Look at the picture .", "circle", "square", "nan", "nan", "A",
     png_base64(1), "shape"],
    ["12", "Which one fits ?", "", "red", "blue", "circle", "square", "D", png_base64(2), "misc"],
    ["13", "What is the shape ?", "nan", "circle", "square", "", "", "B", png_base64(3, (64, 64)), "shape"],
]


def write_tsv(path, rows, encoding="utf-8"):
    """Rows as pandas (VLMEvalKit) writes them: tab-separated, quoted where a field holds a tab, newline or quote."""
    with open(path, "w", newline="", encoding=encoding) as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows([HEADER, *rows])
    return path


def test_mmbench_loader(tmp_path):
    data = load_mmbench_tsv(write_tsv(tmp_path / "mmb.tsv", ROWS), size=SIZE)
    assert data.images.shape == (4, 3, SIZE, SIZE) and data.modality == "image"
    assert 0 <= float(data.images.min()) and float(data.images.max()) <= 1
    assert data.labels.tolist() == [1, 0, 3, 1] and data.class_names == ["A", "B", "C", "D"]
    assert data.names == ["mmbench-10", "mmbench-11", "mmbench-12", "mmbench-13"]
    assert data.extras[0] == {"question": "What colour is the shape ?", "hint": "",
                              "options": {"A": "red", "B": "blue", "C": "green"}}
    assert data.extras[1]["hint"] == "Look at the picture ." and list(data.extras[3]["options"]) == ["A", "B"]
    assert len(load_mmbench_tsv(tmp_path / "mmb.tsv", size=SIZE, limit=2)) == 2
    arr = np.asarray(Image.open(io.BytesIO(base64.b64decode(ROWS[3][8]))), dtype=np.float32) / 255
    want = torch.nn.functional.interpolate(torch.from_numpy(arr).permute(2, 0, 1)[None], size=(SIZE, SIZE),
                                           mode="bilinear", antialias=True, align_corners=False)[0]
    torch.testing.assert_close(data.images[3], want.clamp(0, 1))  # a square image: resize only, no crop


@pytest.mark.parametrize("row, message", [
    (["14", "Which ?", "", "red", "blue", "nan", "nan", "B", "colour"], "line 3: 9 tab-separated field"),
    (["14", "Which ?", "", "red", "blue", "nan", "nan", "B", "not*base64!" * 8, "misc"], "line 3: .*not valid base64"),
    (["14", "Which ?", "", "red", "blue", "nan", "nan", "B", base64.b64encode(b"no image" * 8).decode(), "misc"],
     "line 3: .*does not decode to an image"),
    (["14", "Which ?", "", "red", "blue", "nan", "nan", "B", "99", "misc"],
     "line 3: the image cell '99' is neither a base64-encoded JPEG/PNG nor the index of a row"),
    (["14", "Which ?", "", "red", "blue", "nan", "nan", "C", png_base64(4), "misc"], "line 3: answer 'C'"),
    (["14", "Which ?", "", "red", "nan", "nan", "nan", "A", png_base64(4), "misc"], "line 3: .*2 options"),
])
def test_mmbench_malformed_rows_name_the_line(tmp_path, row, message):
    path = write_tsv(tmp_path / "bad.tsv", [ROWS[0], row])
    with pytest.raises(NTEError, match=message) as err:
        load_mmbench_tsv(path, size=SIZE)
    assert str(path) in str(err.value)


def test_mmbench_as_published(tmp_path):
    """A VLMEvalKit/pandas TSV: a UTF-8 BOM, quoted fields with newlines, tabs and quotes, a \\u2028 inside a
    field, and a repeated image stored as the index of the row that holds it."""
    hint = 'Look at\nthe "picture"\tcarefully .'
    rows = [ROWS[0], list(ROWS[1]), list(ROWS[2])]
    rows[1][2] = hint
    rows[2][1], rows[2][8] = "Which\u2028one fits ?", "10"  # row 12 refers to row 10's image
    path = write_tsv(tmp_path / "mmb.tsv", rows, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf") and b'"Look at\n' in path.read_bytes()
    data = load_mmbench_tsv(path, size=SIZE)
    assert data.names == ["mmbench-10", "mmbench-11", "mmbench-12"] and data.labels.tolist() == [1, 0, 3]
    assert data.extras[1]["hint"] == hint and data.extras[2]["question"] == "Which\u2028one fits ?"
    assert torch.equal(data.images[2], data.images[0])
    assert len(load_mmbench_tsv(path, size=SIZE, limit=1)) == 1
    bad = list(ROWS[3])
    bad[7] = "E"
    with pytest.raises(NTEError, match="line 6: answer 'E'"):  # the multi-line row takes lines 3-4
        load_mmbench_tsv(write_tsv(tmp_path / "bad.tsv", [*rows, bad]), size=SIZE)


def test_read_tsv_unquoted_lines(tmp_path):
    """GLUE-style (no quoting): only newlines end a row, a BOM is not part of the first column's name, and a quote
    is plain text."""
    path = tmp_path / "glue.tsv"
    path.write_text('\ufeffsentence\tlabel\na\u2028b\x0cc\x85d\t1\nsay "hi\t0\n', encoding="utf-8")
    assert read_tsv(path, ["sentence", "label"]) == [(2, {"sentence": "a\u2028b\x0cc\x85d", "label": "1"}),
                                                     (3, {"sentence": 'say "hi', "label": "0"})]
    path.write_text("sentence\tlabel\nfine\t1\ntoo\tmany\tfields\n", encoding="utf-8")
    with pytest.raises(NTEError, match=re.escape(f"{path}: line 3: 3 tab-separated field(s), expected 2")):
        read_tsv(path, ["sentence", "label"])


@pytest.mark.parametrize("name", ["llava_siglip", "qwen2_5_vl"])
def test_end_to_end_mmbench_scoring(tmp_path, handles, name):
    data = load_mmbench_tsv(write_tsv(tmp_path / "mmb.tsv", ROWS), size=SIZE)
    handle = handles[name].bind(data.extras)
    scores = handle.logits(data.images, list(range(len(data))))
    assert scores.shape == (4, 4)
    valid = torch.tensor([[k in e["options"] for k in "ABCD"] for e in data.extras])
    assert torch.isinf(scores[~valid]).all() and (scores[~valid] < 0).all()
    assert torch.isfinite(scores[valid]).all() and (scores[valid] <= 0).all()
    assert valid[torch.arange(4), scores.argmax(1)].all()
    torch.testing.assert_close(handle.logits(data.images[2:], [2, 3]), scores[2:], rtol=1e-4, atol=1e-4)


def test_mmbench_suite_runs_through_the_runner(tmp_path, folders):
    """A whole suite on MMBench rows: the designated VLM answers NTE images exactly as clean ones (agreement 1),
    the oracle restores the other VLM (which resizes to its own 48 x 48), and the manifest and results carry the
    multiple-choice task."""
    from nte_eval.evaluate.suite import parse_suite
    from nte_eval.runner import run_suite

    path = write_tsv(tmp_path / "mmb.tsv", ROWS)
    suite = parse_suite({
        "name": "mmbench-tiny", "data": {"source": "mmbench_tsv", "path": str(path)},
        "public": {"source": "photos"},
        "designated": {"hf-vlm": str(folders["llava_clip"]), "name": "llava_clip"},
        "models": [{"hf-vlm": str(folders["qwen2_vl_48"]), "name": "qwen2_vl"}],  # 48 x 48, the data 32 x 32
        "encoders": [{"type": "nte", "psnr": 0}],
        "attacks": ["identity", "oracle_projection"], "batch_size": 2})
    results = run_suite(suite, tmp_path / "run", progress=False, log=lambda _: None)
    value = results.set_index(["attack", "model", "metric"]).value
    assert value["identity", "llava_clip", "agreement"] == 1.0
    assert value["identity", "llava_clip", "first_layer_ratio"] < 1e-4
    assert value["identity", "qwen2_vl", "first_layer_ratio"] > 0.1
    assert value["oracle_projection", "qwen2_vl", "recon_psnr"] > value["identity", "qwen2_vl", "psnr"] + 10
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["source"] == "mmbench_tsv" and manifest["data"]["n"] == len(ROWS)
    assert manifest["models"]["llava_clip"]["layer"] == "model.vision_tower.embeddings.patch_embedding"
    assert manifest["models"]["qwen2_vl"]["input_size"] == [3, 48, 48]
    from nte_eval.reports.pdf import write_report

    report = write_report(tmp_path / "run")
    assert "gallery" in report.pages and "decoded_samples" not in report.pages
    assert "multiple-choice accuracy (A\u2013D)" in (tmp_path / "run" / "summary.md").read_text()


def test_mmbench_suite_needs_vlms(tmp_path, folders):
    from nte_eval.evaluate.suite import parse_suite
    from nte_eval.runner import run_suite

    suite = parse_suite({
        "name": "mmbench-mixed", "data": {"source": "mmbench_tsv", "path": str(write_tsv(tmp_path / "m.tsv", ROWS))},
        "designated": {"hf-vlm": str(folders["llava_clip"]), "name": "llava_clip"},
        "models": ["zoo:vit_null"], "encoders": [{"type": "nte", "psnr": 0}]})
    with pytest.raises(NTEError, match="zoo:vit_null is not a vision-language model"):
        run_suite(suite, tmp_path / "run", progress=False, log=lambda _: None)
