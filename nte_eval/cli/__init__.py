"""The ``nte-eval`` command: run | certify | merge | list | report | encode | zoo. User errors: one line, exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nte_eval.cli.arguments import MARGIN_HELP, Parser, device, margin, out_folder, positive_int, shard_spec
from nte_eval.errors import NTEError

if TYPE_CHECKING:
    from nte_eval.reports.pdf import Report


def _log(line: str) -> None:
    """A log line on stderr, between the progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def _run(args: argparse.Namespace, attacks: bool) -> Report | None:
    """Run the suite into --out and, with ``attacks``, write its report; with --overwrite, both are built beside a
    previous run, which they replace only once complete."""
    from nte_eval.evaluate.suite import load_suite

    if getattr(args, "shard", None) and args.overwrite:
        from nte_eval.runner import SHARD_OVERWRITE

        raise NTEError(SHARD_OVERWRITE)
    suite = load_suite(args.suite)  # validated before the slower imports below and any model
    suite.check_files(args.suite)
    given = _key_given(args)
    if given is not None:  # the key stays out of the suite file, and so out of what is shared with it
        suite = suite.with_key(_nonempty(*given))
    if not attacks and suite.certify is None:
        raise NTEError(f"{args.suite} has no `certify:` section; add e.g. `certify: {{fidelity: true, degradation: "
                       "true, lipschitz: [product, lipsdp, local]}` (or `certify: true` for the defaults).")
    if args.threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # numpy/scipy BLAS too (the certification's SVDs and angles)
    from nte_eval.evaluate.store import replacing
    from nte_eval.progress import Progress
    from nte_eval.reports import write_report
    from nte_eval.runner import run_suite

    progress = Progress(enabled=not args.quiet)
    progress.plan(1 if attacks else 0)  # the report: one step of the overall bar, so that its ETA covers it
    # The swap covers the run and its report; inside it ``work`` holds no other run, so run_suite needs no overwrite.
    try:
        with replacing(Path(args.out), args.overwrite, _log) as work:
            results = run_suite(suite, work, device=args.device, batch_size=args.batch_size, progress=progress,
                                resume=args.resume, overwrite=False, log=_log, attacks=attacks,
                                shard=getattr(args, "shard", None), executor=getattr(args, "executor", "local"),
                                address=getattr(args, "address", None), threads=args.threads or 1,
                                workers=getattr(args, "workers", 1))
            if not attacks or results is None:  # certify alone, or a --shard process whose run is not whole yet
                return None
            report = write_report(work, args.margin)
            progress.advance()
            return report
    finally:
        progress.close()


def cmd_certify(args: argparse.Namespace) -> int:
    from nte_eval.reports.certification import certification_text

    _run(args, attacks=False)
    print(certification_text(Path(args.out)), end="")
    print(f"\nCertification files: {Path(args.out)}/certificates.csv, lipschitz.csv, angles.csv, certify.json")
    return 0


def _finish(out: Path, report: Report) -> None:
    """Print the report's headline and where everything is."""
    from nte_eval.evaluate.run_folder import REPORT, RESULTS, SUMMARY_MD, SUMMARY_TEX
    from nte_eval.reports.summary_files import text

    print(text(report.headline))
    print(f"\nTables: {out / SUMMARY_MD}, {out / SUMMARY_TEX}; tidy results: {out / RESULTS}\n"
          f"Report: {out / REPORT} ({len(report.pages)} pages)")


def cmd_run(args: argparse.Namespace) -> int:
    report = _run(args, attacks=True)
    if report is not None:
        _finish(Path(args.out), report)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge the item files of a run that --shard processes filled, then write its report."""
    from nte_eval.reports import write_report
    from nte_eval.runner import finish_run

    finish_run(Path(args.dir), _log, plugins=True)
    _finish(Path(args.dir), write_report(args.dir, args.margin))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Names, knowledge levels, parameters and defaults of the registered attacks / encoders, or the zoo models."""
    if args.what == "models":
        from nte_eval.models.zoo import zoo_table

        rows = [{"name": f"zoo:{r['name']}", "arch": r["arch"], "test_accuracy": r["test_accuracy"]}
                for r in zoo_table()]
        note = ("Also: timm:NAME[@checkpoint] or a mapping {timm: NAME, checkpoint: PATH, ...} in a suite; local "
                "Hugging Face folders hf:PATH (image classifier), hf-vlm:PATH (vision-language model), "
                "hf-text:PATH (text classifier) with pip install 'nte-eval[hf]'.")
    else:
        from nte_eval.attacks import ATTACKS
        from nte_eval.encoders import ENCODERS

        registry = ATTACKS if args.what == "attacks" else ENCODERS
        rows = [registry.get(name).describe() for name in registry.names()]
        note = "List-valued parameters in a suite are sweeps. Plugins: entry-point group " + registry.group + "."
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for row in rows:
        tags = [f"knowledge: {row['knowledge']}"] if "knowledge" in row else []
        tags += [f"data: {' + '.join(row['modalities'])}"] if "modalities" in row else []
        head = row["name"] + (f"  [{'; '.join(tags)}]" if tags else "")
        print(head + (f"  {row['description']}" if row.get("description") else "")
              + (f"  {row['arch']}, test accuracy {row['test_accuracy']}" if "arch" in row else ""))
        for pname, spec in row.get("params", {}).items():
            print(f"    {pname} = {spec['default']!r}  ({spec['type']})")
    print(note)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nte_eval.evaluate.run_folder import MANIFEST, RESULTS, WORST_CASE

    for name in (RESULTS, MANIFEST, WORST_CASE):
        if not (Path(args.dir) / name).is_file():
            raise NTEError(f"{args.dir} has no {name}; point `nte-eval report` at the --out folder of a finished run "
                           "(a killed run: finish it with `nte-eval run SUITE --out DIR --resume`).")
    from nte_eval.reports import write_report

    _finish(Path(args.dir), write_report(args.dir, args.margin))
    return 0


def with_pd_options(fn) -> None:
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 60):
        fn()


KEY_ENV = "NTE_EVAL_KEY"  # the environment variable `encode` reads the key from by default


def _key_given(args: argparse.Namespace) -> tuple[str, str] | None:
    """(key, where it came from) from --key-file or --key-env; None when neither is given."""
    if args.key_file:
        path = Path(args.key_file)
        if not path.is_file():
            raise NTEError(f"--key-file {path}: no such file; write the key into it (one line), or use --key-env NAME.")
        return path.read_text().rstrip("\r\n"), f"--key-file {path}"
    if args.key_env:
        if args.key_env not in os.environ:
            raise NTEError(f"no key: set the environment variable {args.key_env}, or pass --key-file PATH.")
        return os.environ[args.key_env], f"the environment variable {args.key_env}"
    return None


def _nonempty(key: str, where: str) -> str:
    if not key:
        raise NTEError(f"the key from {where} is empty; give a long random key (a short one can be guessed).")
    return key


def _encode_key(args: argparse.Namespace) -> str:
    """The NTE key from --key-file, --key-env, --key or $NTE_EVAL_KEY (a file or a variable stays out of `ps` and the
    shell history); refuses an empty one."""
    given = _key_given(args)
    if given is None and args.key is not None:
        given = args.key, "--key"
    if given is None:
        if KEY_ENV not in os.environ:
            raise NTEError(f"no key: set the environment variable {KEY_ENV}, or pass --key-file PATH or --key-env "
                           "NAME.")
        given = os.environ[KEY_ENV], f"the environment variable {KEY_ENV}"
    return _nonempty(*given)


def cmd_encode(args: argparse.Namespace) -> int:
    from nte_eval.export import encode_to_folder, key_file

    manifest = encode_to_folder(
        model=args.model, source=args.data, out=args.out, key=_encode_key(args), psnr=args.psnr, mode=args.mode,
        select=args.select, noise=args.noise, box=args.box, quantize=args.quantize, save_key=args.save_key,
        limit=args.limit, split=args.split, device=args.device)
    print(f"{len(manifest['files'])} {manifest['format']} files in {args.out}; {manifest['note']}; key fingerprint "
          f"{manifest['key_fingerprint']}")
    if args.save_key:
        print(f"The key is in {key_file(args.out)} (readable by you only, outside the release folder): keep it "
              "secret, it removes the protection.")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from nte_eval.models.zoo import zoo_table

    if args.zoo_command == "train":
        from nte_eval.models.zoo.train import train_zoo

        train_zoo(args.names or None)
    rows = zoo_table()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        import pandas as pd

        cols = ["name", "arch", "kind", "kernel", "stride", "padding", "in_channels", "out_channels", "patch_dim",
                "exact_null_dim", "null_dim_scope", "test_accuracy"]
        with_pd_options(lambda: print(pd.DataFrame(rows)[cols].to_string(index=False)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="nte-eval", description="Build, attack and certify non-transferable examples.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="evaluate a suite YAML (attacks, then its certify section) into --out")
    cert = sub.add_parser("certify", help="run only a suite's certify section into --out")
    for p_, fn in ((run, cmd_run), (cert, cmd_certify)):
        p_.add_argument("suite", help="suite YAML file (see examples/quickstart.yaml)")
        p_.add_argument("--out", required=True, type=out_folder, help="output folder")
        p_.add_argument("--device", default="cpu", type=device, help="torch device: cpu, cuda or cuda:N")
        p_.add_argument("--batch-size", type=positive_int, default=None, help="override the suite's batch_size")
        p_.add_argument("--quiet", action="store_true", help="no progress bars")
        p_.add_argument("--threads", type=positive_int, default=None,
                        help="torch and BLAS CPU threads (default: their choice; 1 is fastest for small models)")
        keys = p_.add_mutually_exclusive_group()
        keys.add_argument("--key-file", help="read the NTE key from this file instead of the suite's `seed`")
        keys.add_argument("--key-env", help="read the NTE key from this environment variable instead of `seed`")
        again = p_.add_mutually_exclusive_group()
        again.add_argument("--resume", action="store_true", help="continue a killed run: skip the finished items")
        again.add_argument("--overwrite", action="store_true",
                           help="start again; a previous run in --out stays until the new one is complete")
        p_.set_defaults(fn=fn)
    run.add_argument("--margin", type=margin, default=None, help=MARGIN_HELP)
    run.add_argument("--shard", type=shard_spec, default=None, metavar="I/N",
                     help="run only this process's share of the items, in an --out the others share (a SLURM array: "
                          "one process per I); then `nte-eval merge OUT`")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local: this process (default); ray: actors on a Ray cluster (pip install -e '.[ray]')")
    run.add_argument("--address", default=None, help="with --executor ray: the head node HOST:PORT, or auto")
    run.add_argument("--workers", type=positive_int, default=1,
                     help="local: run the items in this many processes of --threads threads each (default 1)")

    lst = sub.add_parser("list", help="list attacks, encoders or models with their parameters")
    lst.add_argument("what", nargs="?", default="attacks", choices=["attacks", "encoders", "models"])
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(fn=cmd_list)

    for name, fn, what in (("report", cmd_report, "rebuild report.pdf and summary.md/.tex from a run folder's files"),
                           ("merge", cmd_merge, "merge a run's item files (after its --shard I/N processes), report")):
        rep = sub.add_parser(name, help=what)
        rep.add_argument("dir", help="the --out folder of a run")
        rep.add_argument("--margin", type=margin, default=None, help=MARGIN_HELP)
        rep.set_defaults(fn=fn)

    enc = sub.add_parser("encode", help="recode images for one designated model and key")
    enc.add_argument("--model", required=True, help="zoo:NAME or timm:NAME[@checkpoint]")
    enc.add_argument("--data", required=True, help="'digits', 'photos', or a folder of images")
    enc.add_argument("--out", required=True, type=out_folder, help="output folder")
    keys = enc.add_mutually_exclusive_group()
    keys.add_argument("--key-file", help="read the NTE key from this file (a final newline is dropped)")
    keys.add_argument("--key-env", help=f"read the NTE key from this environment variable (default: {KEY_ENV})")
    keys.add_argument("--key", help="the NTE key itself (visible in `ps` and the shell history: prefer --key-file)")
    enc.add_argument("--psnr", type=float, default=30.0, help="target pixel-space PSNR in dB (peak 1)")
    enc.add_argument("--mode", default="auto", choices=["auto", "patch", "operator"])
    enc.add_argument("--select", default="tau=0.01", help="tau=T, k=N or energy=F")
    enc.add_argument("--noise", default="per_patch", choices=["per_patch", "tiled"])
    enc.add_argument("--box", default="project", choices=["none", "clip", "project"])
    enc.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=True,
                     help="round to 8 bit (default on: storable PNGs)")
    enc.add_argument("--save-key", action="store_true",
                     help="also write the key to OUT.key beside the release folder (owner-only, mode 0600)")
    enc.add_argument("--limit", type=positive_int, default=None, help="encode at most this many images")
    enc.add_argument("--split", default="test", choices=["train", "test", "all"], help="split for --data digits")
    enc.add_argument("--device", default="cpu", type=device, help="torch device: cpu, cuda or cuda:N")
    enc.set_defaults(fn=cmd_encode)

    zoo = sub.add_parser("zoo", help="the bundled model zoo trained on digits")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    zl = zsub.add_parser("list", help="list the zoo models and their first-layer geometry")
    zl.add_argument("--json", action="store_true")
    zt = zsub.add_parser("train", help="(re)train zoo models into the weights folder")
    zt.add_argument("names", nargs="*")
    zt.add_argument("--json", action="store_true")
    zoo.set_defaults(fn=cmd_zoo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except NTEError as e:
        print(f"nte-eval: error: {' '.join(str(e).splitlines())}", file=sys.stderr)  # one line, whatever it quotes
        return 2
    except SystemExit as e:  # nte-eval itself never exits inside a command: a plugin's code did
        print(f"nte-eval: error: code run by `nte-eval {args.command}` (a plugin's?) called sys.exit({e.code!r}); the "
              "command did not finish.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nte-eval: interrupted; finished items are kept (under shards/): continue with --resume",
              file=sys.stderr)
        return 130

