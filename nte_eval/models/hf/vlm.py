"""Vision-language models (``hf-vlm:PATH``) as multiple-choice scorers, recoded for their vision tower.

The designated first linear operator is the vision tower's patch embedding, so NTEs leave the tower (and hence the
answer) unchanged. Supported families and their patch embeddings (paths inside the ``*ForConditionalGeneration``):

- ``llava`` (``LlavaForConditionalGeneration``) with a CLIP or SigLIP tower:
  ``model.vision_tower.embeddings.patch_embedding``; input size ``vision_config.image_size``.
- ``internvl`` (transformers' native ``InternVLForConditionalGeneration``):
  ``model.vision_tower.embeddings.patch_embeddings.projection``; input size ``vision_config.image_size``.
- ``qwen2_vl`` / ``qwen2_5_vl``: a Conv3d over (temporal_patch_size, p, p) on patches whose still image is repeated
  over time, i.e. the 2D convolution whose kernel is the time-sum of the Conv3d weight. ``TimeRepeatedConv2d`` runs
  the real Conv3d as that Conv2d, at ``model.visual.patch_embed.as_conv2d``. Qwen has dynamic resolution; nte-eval
  fixes a square side S = f * min(16, floor(sqrt(max_pixels) / f)), f = patch * merge size (28 for the released
  models: 448 px, 256 visual tokens), raised to the processor's min_pixels if needed.

The prompt is built here, not by the HF processor: ``[bos] [image start] image tokens [image end]`` followed by
``"hint\\nquestion\\nA. ...\\nB. ...\\nAnswer:"`` (the hint line only when non-empty). The image tokens are the
config's image token id, as many as the tower and projector produce; the image start/end are Qwen's
vision_start/vision_end ids, or InternVL's ``<img>``/``</img>`` when the tokenizer has them. The score of an
option is the next-token log-probability of its letter (the tokenizer's single token for "A".."D"); letters a
question does not offer score -inf. Weights load in float32 so that NTEs stay exact.

mean/std come from the saved image processor (``preprocessor_config.json``, or the ``image_processor`` entry of the
``processor_config.json`` that ``AutoProcessor.save_pretrained`` writes), class defaults included, mapped onto pixels
in [0, 1] as ``hf:`` does (rescale_factor, image_mean, image_std).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nte_eval.errors import NTEError
from nte_eval.models.handle import ModelHandle
from nte_eval.models.hf.folder import require_safetensors
from nte_eval.models.hf.vision import image_processor, processor_mean_std

LETTERS = ("A", "B", "C", "D")
QWEN_MAX_SIDE_TOKENS = 16  # Qwen's fixed square side, in merged tokens (16 * 28 = 448 px for the released models)


@dataclass(frozen=True)
class Family:
    """Where a VLM family keeps its pieces."""

    model_class: str  # the transformers class to load
    towers: tuple[str, ...]  # supported vision_config.model_type values
    patch: str  # module path of the patch embedding (as a Conv2d)
    projector: str  # module path of the projector; ``tower_features`` returns its input


FAMILIES = {
    "llava": Family("LlavaForConditionalGeneration", ("clip_vision_model", "siglip_vision_model"),
                    "model.vision_tower.embeddings.patch_embedding", "model.multi_modal_projector"),
    "internvl": Family("InternVLForConditionalGeneration", ("internvl_vision",),
                       "model.vision_tower.embeddings.patch_embeddings.projection", "model.multi_modal_projector"),
    "qwen2_vl": Family("Qwen2VLForConditionalGeneration", ("qwen2_vl_vision",),
                       "model.visual.patch_embed.as_conv2d", "model.visual.merger"),
    "qwen2_5_vl": Family("Qwen2_5_VLForConditionalGeneration", ("qwen2_5_vl_vision",),
                         "model.visual.patch_embed.as_conv2d", "model.visual.merger"),
}
QWEN = ("qwen2_vl", "qwen2_5_vl")


class TimeRepeatedConv2d(nn.Conv2d):
    """Qwen's Conv3d patch embedding on a still image (repeated over its temporal patch), as the Conv2d it is.

    ``forward`` runs the real patch embedding on the image's flattened, time-repeated patches; the ``weight``
    buffer (the time-sum of the Conv3d kernel) only carries shape, device and dtype, and ``resolve_first_layer``
    reads the effective kernel off ``forward`` and verifies it.
    """

    def __init__(self, embed: nn.Module):
        proj = embed.proj
        t, p, _ = proj.kernel_size
        super().__init__(proj.in_channels, proj.out_channels, p, stride=p, bias=False)
        del self.weight
        self.register_buffer("weight", proj.weight.detach().sum(2), persistent=False)
        self.time = t
        self.__dict__["embed"] = embed  # not a submodule: it stays where the model keeps it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.kernel_size[0]
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).unsqueeze(4)
        patches = patches.expand(-1, -1, -1, -1, self.time, -1, -1).reshape(-1, c * self.time * p * p)
        return self.embed(patches).reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2)


class VLMHandle(ModelHandle):
    """A VLM scoring multiple-choice questions: (B, 4) next-token log-probabilities of the letters A-D.

    ``bind(extras)`` sets the questions; ``logits(x, index)`` reads the questions at positions ``index``.
    """

    resizes_input = True  # a VLM's processor resizes whatever it is given; so does this handle

    def __init__(self, model: nn.Module, family: str, tokenizer: Any, mean: tuple[float, ...],
                 std: tuple[float, ...], input_size: tuple[int, int, int], spec: str):
        self.family, self.tokenizer = family, tokenizer
        config = model.config
        if family in QWEN:
            embed = model.get_submodule("model.visual.patch_embed")
            embed.as_conv2d = TimeRepeatedConv2d(embed)
        super().__init__(model, FAMILIES[family].patch, mean, std, input_size, list(LETTERS), spec)
        self.letter_ids = [self._letter_id(letter) for letter in LETTERS]
        image = [config.image_token_id] * self._count_image_tokens()
        if family in QWEN:
            image = [config.vision_start_token_id, *image, config.vision_end_token_id]
        elif family == "internvl":
            vocab = tokenizer.get_vocab()
            if "<img>" in vocab and "</img>" in vocab:
                image = [vocab["<img>"], *image, vocab["</img>"]]
        bos = tokenizer.bos_token_id
        self.image_ids = ([] if bos is None else [bos]) + image
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else pad
        self.prompts: list[list[int]] = []
        self.valid: torch.Tensor = torch.zeros(0, len(LETTERS), dtype=torch.bool)

    def _letter_id(self, letter: str) -> int:
        ids = self.tokenizer.encode(letter, add_special_tokens=False)
        if len(ids) != 1:
            raise NTEError(f"{self.spec}: the tokenizer splits the answer letter {letter!r} into {len(ids)} tokens "
                           f"{ids}; multiple-choice scoring needs one token per letter A-D.")
        return ids[0]

    @torch.no_grad()
    def _count_image_tokens(self) -> int:
        """The number of visual tokens the tower and projector produce for one image at the input size."""
        u = torch.zeros(1, *self.input_size, device=self.device, dtype=self.first.weight.dtype)
        return len(self.module.get_image_features(**self.vision_inputs(u)).pooler_output[0])

    def bind(self, extras: list[dict]) -> VLMHandle:
        """Set the multiple-choice questions, one dict per sample (``question``, ``hint``, ``options``)."""
        prompts, valid = [], []
        for i, extra in enumerate(extras):
            question, hint, options = _check_extra(extra, f"{self.spec}: extras[{i}]")
            lines = [hint] if hint else []
            lines += [question, *(f"{k}. {options[k]}" for k in LETTERS if k in options), "Answer:"]
            prompts.append(self.tokenizer.encode("\n".join(lines), add_special_tokens=False))
            valid.append([k in options for k in LETTERS])
        self.prompts, self.valid = prompts, torch.tensor(valid, dtype=torch.bool).reshape(-1, len(LETTERS))
        return self

    def check_input(self, x: torch.Tensor) -> None:
        """Any finite (N, 3, H, W) image: the handle resizes to the tower's size."""
        if x.dim() != 4 or x.shape[1] != self.input_size[0]:
            raise NTEError(f"{self.spec}: expects input (N, {self.input_size[0]}, H, W), got {tuple(x.shape)}.")
        if not torch.isfinite(x.sum()):
            raise NTEError(f"{self.spec}: input contains NaN or infinite pixels.")

    @torch.no_grad()
    def first_layer_response(self, x: torch.Tensor) -> torch.Tensor:
        """A(x) at the tower's own size: the patch embedding applied to the resized, normalised pixels."""
        return super().first_layer_response(self.resize(x))

    @torch.no_grad()
    def first_layer_change(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """A(x) - A(reference) at the tower's own size (resizing is linear: the difference is resized)."""
        return super().first_layer_change(self.resize(x), self.resize(reference))

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel images at the tower's own size (bilinear, antialiased), untouched when they already are."""
        size = tuple(self.input_size[1:])
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, index: list[int] | None = None) -> torch.Tensor:
        """(B, 4) letter log-probabilities for pixel-space images (no gradient)."""
        self.check_input(x)
        return self.forward(self.normalize(self.resize(x)), index)

    def forward_grad(self, x: torch.Tensor, index: list[int] | None = None) -> torch.Tensor:
        """(B, 4) letter log-probabilities with autograd enabled."""
        self.check_input(x)
        return self.forward(self.normalize(self.resize(x)), index)

    def forward(self, u: torch.Tensor, index: list[int] | None = None) -> torch.Tensor:
        """(B, 4) letter log-probabilities for normalised images ``u`` at the input size and the bound questions
        at positions ``index`` (default, only when exactly B questions are bound: all of them)."""
        if tuple(u.shape[1:]) != self.input_size:
            raise NTEError(f"{self.spec}: forward takes normalised input (N, {', '.join(map(str, self.input_size))})"
                           f", got {tuple(u.shape)}; use logits(), which resizes.")
        if index is None and len(self.prompts) != u.shape[0]:
            raise NTEError(f"{self.spec}: {u.shape[0]} images but {len(self.prompts)} bound questions; pass the "
                           "images' sample positions in the bound data (index) so each image gets its own question.")
        index = list(range(u.shape[0])) if index is None else [int(i) for i in index]
        if len(index) != u.shape[0]:
            raise NTEError(f"{self.spec}: {u.shape[0]} images but {len(index)} question indices.")
        bad = [i for i in index if not 0 <= i < len(self.prompts)]
        if bad:
            raise NTEError(f"{self.spec}: no bound question for sample {bad[0]} ({len(self.prompts)} bound); call "
                           "bind(extras) with the data's per-sample questions (ImageSet.extras) first.")
        seqs = [self.image_ids + self.prompts[i] for i in index]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([[self.pad_id] * (width - len(s)) + s for s in seqs], device=u.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=u.device)
        if self.family in QWEN:  # M-RoPE positions come from the token types, counted over the mask
            kwargs = {"mm_token_type_ids": (ids == self.module.config.image_token_id).int()}
        else:  # positions count real tokens only, so left padding does not shift them
            kwargs = {"position_ids": (mask.cumsum(-1) - 1).clamp_min(0)}
        out = self.module(input_ids=ids, attention_mask=mask, **self.vision_inputs(u), **kwargs, use_cache=False,
                          logits_to_keep=1)
        scores = out.logits[:, -1].float().log_softmax(-1)[:, self.letter_ids]
        return scores.masked_fill(~self.valid[index].to(u.device), float("-inf"))

    def vision_inputs(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's own image inputs for normalised images ``u``: ``pixel_values`` (Qwen: flattened patches in
        Qwen2VLImageProcessor's order, plus ``image_grid_thw``)."""
        u = u.to(self.first.weight.dtype)
        if self.family not in QWEN:
            return {"pixel_values": u}
        vc = self.module.config.vision_config
        b, c, h, w = u.shape
        p, m, t = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
        gh, gw = h // p, w // p
        patches = u.reshape(b, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7).unsqueeze(6)
        patches = patches.expand(-1, -1, -1, -1, -1, -1, t, -1, -1).reshape(b * gh * gw, c * t * p * p)
        grid = torch.tensor([[1, gh, gw]] * b, device=u.device)
        return {"pixel_values": patches, "image_grid_thw": grid}

    @torch.no_grad()
    def tower_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) vision-tower features for pixel images: the hidden states the projector consumes."""
        self.check_input(x)
        u = self.normalize(self.resize(x))
        store = []
        projector = self.module.get_submodule(FAMILIES[self.family].projector)
        hook = projector.register_forward_pre_hook(lambda module, args: store.append(args[0]))
        try:
            self.module.get_image_features(**self.vision_inputs(u))
        finally:
            hook.remove()
        return store[0].reshape(x.shape[0], -1, store[0].shape[-1])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "family": self.family}


def _check_extra(extra: Any, what: str) -> tuple[str, str, dict[str, str]]:
    """(question, hint, options) of one sample's side information, or an NTEError naming what is wrong."""
    if not isinstance(extra, dict) or not isinstance(extra.get("question"), str):
        raise NTEError(f"{what}: expected a dict with 'question' (text), 'hint' and 'options' {{letter: text}}.")
    hint, options = extra.get("hint") or "", extra.get("options")
    if not isinstance(options, dict) or not 2 <= len(options) <= 4 or not set(options) <= set(LETTERS):
        raise NTEError(f"{what}: 'options' must map 2-4 of the letters A-D to their text, got {options!r}.")
    return extra["question"], str(hint), {k: str(v) for k, v in options.items()}


def _input_size(config: Any, family: str, processor: dict[str, Any]) -> tuple[int, int, int]:
    """The square (or config) size the handle feeds the tower (see the module docstring)."""
    vc = config.vision_config
    if family not in QWEN:
        size = vc.image_size
        h, w = (size, size) if isinstance(size, int) else size
        return (3, int(h), int(w))
    f = vc.patch_size * vc.spatial_merge_size
    limits = processor.get("size") or {}
    max_pixels = processor.get("max_pixels") or limits.get("longest_edge") or (QWEN_MAX_SIDE_TOKENS * f) ** 2
    min_pixels = processor.get("min_pixels") or limits.get("shortest_edge") or 0
    blocks = min(QWEN_MAX_SIDE_TOKENS, math.isqrt(int(max_pixels)) // f)
    blocks = max(blocks, math.ceil(math.sqrt(min_pixels) / f), 1)
    return (3, blocks * f, blocks * f)


def from_hf_vlm(folder: Path, spec: str) -> VLMHandle:
    """Load a local VLM folder (config.json, safetensors weights, tokenizer, image processor)."""
    import transformers

    supported = ", ".join(f"{k} ({v.model_class}: {'/'.join(v.towers)})" for k, v in FAMILIES.items())
    custom = ("For another model, wrap it and use the Python API: ModelHandle.from_module(module, first_layer=PATH, "
              "mean=..., std=..., input_size=...).")
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise NTEError(f"{spec}: cannot read {folder}/config.json ({e}); supported: {supported}. {custom}") from None
    family = config.model_type
    if family not in FAMILIES:
        raise NTEError(f"{spec}: model type {family!r} has no known vision tower; supported: {supported}. {custom}")
    tower = getattr(config.vision_config, "model_type", None)
    if tower not in FAMILIES[family].towers:
        raise NTEError(f"{spec}: {family} with a {tower!r} vision tower is not supported; supported: {supported}. "
                       f"{custom}")
    require_safetensors(folder, spec)
    processor = image_processor(folder, spec)
    mean, std = processor_mean_std(processor, 3, spec)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise NTEError(f"{spec}: cannot load the tokenizer from {folder} ({e}); save it with "
                       "tokenizer.save_pretrained(FOLDER).") from None
    vocab = config.get_text_config().vocab_size
    if not vocab / 2 <= len(tokenizer) <= vocab:
        raise NTEError(f"{spec}: the tokenizer in {folder} has {len(tokenizer)} tokens but the text model's "
                       f"vocabulary has {vocab}, so it is not the model's tokenizer (transformers builds a default one "
                       "when the tokenizer files are missing); save the model's own there: tokenizer = "
                       "AutoTokenizer.from_pretrained(NAME); tokenizer.save_pretrained(FOLDER).")
    model_class = getattr(transformers, FAMILIES[family].model_class)
    try:
        model = model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise NTEError(f"{spec}: cannot load {FAMILIES[family].model_class} from {folder}: {e}") from None
    return VLMHandle(model, family, tokenizer, mean, std, _input_size(config, family, processor), spec)
