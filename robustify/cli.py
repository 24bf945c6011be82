"""The ``robustify`` command. Thin: parses arguments and calls the modules that own each idea.

User errors (:class:`robustify.errors.UserError`) print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .errors import Interrupted, UserError

Handler = Callable[[argparse.Namespace], int | None]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default only when it has one (recipe-backed flags say their recipe key and value instead)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _quickstart_defaults() -> dict[str, str]:
    """The quickstart recipe's values, shown in --help next to the flags that override them."""
    try:
        import yaml

        from .config import resolve_recipe_path

        r = yaml.safe_load(resolve_recipe_path("quickstart").read_text())
        return {"model": r["model"]["name"], "data": r["data"]["name"], "method": r["method"]["name"],
                "eps": str(r["threat"]["eps"]), "epochs": str(r["train"]["epochs"]), "output_dir": r["output_dir"]}
    except Exception:  # noqa: BLE001 - help must render even from a broken install
        return {}


def _finetune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", formatter_class=_Formatter,
        help="adversarially fine-tune a pretrained backbone (no arguments: the offline quickstart)",
        description="Adversarially fine-tune a timm backbone. With no arguments it runs recipes/quickstart.yaml: a "
                    "small pretrained backbone and data set shipped with robustify, offline, in about a minute on a "
                    "laptop CPU. Flags override the recipe; --set overrides any recipe key.",
    )
    q = _quickstart_defaults()

    def recipe(key: str, flag: str) -> str:
        return f"(recipe key {key}; quickstart: {q[flag]})" if flag in q else f"(recipe key {key})"

    p.add_argument("--recipe", default="quickstart", help="recipe YAML path or shipped recipe name")
    p.add_argument("--model", help="timm name, hf-hub:ORG/NAME, local-dir:PATH or a run folder "
                   + recipe("model.name", "model"))
    p.add_argument("--data", help="quickstart, cifar10, cifar100, ORG/NAME, imagefolder:PATH or npz:PATH "
                   + recipe("data.name", "data"))
    p.add_argument("--method", help="natural | fgsm-rs | n-fgsm | free | deat | pgd " + recipe("method.name", "method"))
    p.add_argument("--eps", help="perturbation radius in [0,1] pixel units, e.g. 8/255 " + recipe("threat.eps", "eps"))
    p.add_argument("--epochs", help="epochs (divided by m for free AT) " + recipe("train.epochs", "epochs"))
    p.add_argument("--output-dir", help="run folder; {time} expands to a timestamp "
                   + recipe("output_dir", "output_dir"))
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --output-dir (with that run's recipe.yaml unless --recipe)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickle model.checkpoint (.pth, .bin), which can run code when loaded "
                        "(recipe key model.trust_pickle)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key, e.g. --set schedule.lr=0.1 --set method.replays=8")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, stages, planned passes and cost estimate, check the model and "
                        "data, and exit without training or writing anything")
    p.add_argument("--limit-train", type=int, metavar="N", help="train on the first N examples only (recipe key "
                   "data.max_train_examples), for a quick trial")
    p.add_argument("--limit-eval", type=int, metavar="N", help="evaluate on the first N examples only (recipe key "
                   "eval.n_examples)")
    p.set_defaults(handler=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from .config import build_config

    overrides = list(args.overrides) + (["model.trust_pickle=true"] if args.trust_pickle else [])
    for flag, key in (("model", "model.name"), ("data", "data.name"), ("method", "method.name"),
                      ("eps", "threat.eps"), ("epochs", "train.epochs"), ("output_dir", "output_dir"),
                      ("limit_train", "data.max_train_examples"), ("limit_eval", "eval.n_examples")):
        value = getattr(args, flag)
        if value is not None:
            if flag.startswith("limit_") and value < 1:
                raise UserError(f"--{flag.replace('_', '-')} {value} is not accepted; use 1 or more examples")
            overrides.insert(0, f"{key}={value}")
    if args.dry_run:
        from .recipes import dry_run

        print(dry_run(args.recipe, overrides))
        return 0
    from .train.trainer import finetune

    recipe = args.recipe
    if args.resume:
        if args.output_dir is None:
            raise UserError("--resume needs --output-dir RUN_DIR: the folder of the run to continue")
        saved = Path(args.output_dir) / "recipe.yaml"
        if saved.is_file() and args.recipe == "quickstart":  # continue with the run's own resolved recipe
            recipe = str(saved)
    cfg = build_config(recipe, overrides)
    if not args.resume and args.output_dir is None:
        rerun = _rerun_output_dir(recipe, cfg.output_dir)
        if rerun:
            print(f"robustify: {recipe} is the recipe of the run in {cfg.output_dir}; this new run goes to {rerun}")
            cfg.output_dir = rerun
    finetune(cfg, resume=args.resume)
    return 0


def _rerun_output_dir(recipe: str, output_dir: str) -> str | None:
    """A run's own recipe.yaml names the run's folder; rerunning it writes beside it (``RUN-rerun-{time}``)."""
    path = Path(recipe).expanduser()
    if path.name != "recipe.yaml" or not path.is_file() or "{time}" in output_dir:
        return None
    if path.parent.resolve() != Path(output_dir).expanduser().resolve():
        return None
    return f"{output_dir.rstrip('/')}-rerun-{{time}}"


def _push_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push", formatter_class=_Formatter, help="publish a run folder to the Hugging Face Hub (one commit)",
        description="Publish a finished run folder to the Hugging Face Hub in one commit: model.safetensors, "
                    "config.json, a freshly rendered model card (README.md, replaced on every push), metrics.json, "
                    "recipe.yaml and plots (never checkpoints/). The repo is created when missing. The folder must "
                    "hold evaluation results and its weights must load with timm. Token: HF_TOKEN or 'hf auth login'.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --output-dir of a finished 'robustify finetune'")
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the model repo on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                                                           "visibility)")
    p.add_argument("--revision", metavar="BRANCH", help="push to this branch (created from main when missing) "
                                                         "instead of main")
    p.add_argument("--message", help="commit message (default: 'robustify push: RUN_NAME')")
    p.set_defaults(handler=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from .publish.hub import load_spec, push, usage_text

    res = push(args.run_dir, args.repo_id, private=args.private, revision=args.revision, commit_message=args.message)
    if res.changed:
        verb = "created and pushed" if res.created else "pushed"
        print(f"{verb} {res.repo_id} ({res.revision}) in one commit {res.commit[:8]}: {', '.join(res.files)}")
    else:
        print(f"nothing to push: {res.repo_id} ({res.revision}) already holds these files at commit {res.commit[:8]}")
    if args.private and not res.created:
        print(f"note: {res.repo_id} already existed; --private did not change its visibility")
    print(f"commit: {res.url}")
    print(usage_text(res.repo_id, args.revision))
    print(f"to list it in 'robustify zoo': add zoo/NAME.yaml with hub_id {res.repo_id} and the card's robustbench "
          f"fields (spec: {load_spec(res.repo_id, args.revision)})")
    return 0


def _pull_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pull", formatter_class=_Formatter, help="download a robust model from the Hub and check that it loads",
        description="Download a timm model repo (into the Hugging Face cache, or --local-dir), check that it loads "
                    "with timm and print how to use it. Pickle weights (.bin, .pth, ...) are refused unless "
                    "--trust-pickle is given.",
    )
    p.add_argument("repo_id", metavar="ORG/NAME", help="the model repo (hf-hub:ORG/NAME is accepted too)")
    p.add_argument("--revision", metavar="REV", help="branch, tag or commit id (default: main)")
    p.add_argument("--local-dir", metavar="DIR", help="download into DIR instead of the Hugging Face cache")
    p.add_argument("--trust-pickle", action="store_true",
                   help="also download and load pickle weights, which can run code when loaded")
    p.set_defaults(handler=_run_pull)


def _run_pull(args: argparse.Namespace) -> int:
    from .publish.hub import card_summary, pull, usage_text

    folder, info, skipped = pull(args.repo_id, revision=args.revision, local_dir=args.local_dir,
                                 trust_pickle=args.trust_pickle)
    print(f"downloaded {args.repo_id} to {folder}")
    print(f"loads with timm: {info['architecture']}, {info['num_classes']} classes, input size {info['input_size']}")
    if skipped:
        print(f"skipped pickle files (pass --trust-pickle to download them): {', '.join(skipped)}")
    summary = card_summary(folder)
    if summary:
        print(f"card: {summary}")
    print(usage_text(args.repo_id.removeprefix("hf-hub:"), args.revision, local=folder))
    return 0


def _zoo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zoo", formatter_class=_Formatter, help="robust models published with robustify",
        description="The zoo: one YAML file per published model under zoo/ (adding a model is adding a file).",
    )
    zsub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    zsub.add_parser("list", help="a table of every model in the zoo").set_defaults(handler=_run_zoo_list)
    show = zsub.add_parser("show", help="one model in full: fields, how to load it, the recipe that made it")
    show.add_argument("name", metavar="NAME", help="a name from 'robustify zoo list' (or its Hub id)")
    show.set_defaults(handler=_run_zoo_show)
    p.set_defaults(handler=_run_zoo_list)


def _run_zoo_list(args: argparse.Namespace) -> int:
    from .publish.zoo import load_zoo, print_list

    entries = load_zoo()
    if not entries:
        print("the zoo is empty (no zoo/*.yaml files found)")
        return 0
    print_list(entries)
    print("details: robustify zoo show NAME")
    return 0


def _run_zoo_show(args: argparse.Namespace) -> int:
    from .publish.zoo import get_entry, show_text

    print(show_text(get_entry(args.name)))
    return 0


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", formatter_class=_Formatter, help="time one training step of each method on this machine",
        description="Measure what one training minibatch of each method costs on this machine (CUDA if available, "
                    "else CPU), through the training code itself, on synthetic [0,1] inputs at the model's input size "
                    "with random labels: seconds and images per second, forward/backward passes, cost relative to "
                    "natural training per minibatch and per fine-tuning run (free AT divides the epochs by m), peak "
                    "GPU memory. Settings come from --recipe (default: the quickstart) with these flags and --set "
                    "applied; plain timm names are built without pretrained weights, so 'robustify bench --model "
                    "resnet50' works offline.",
    )
    p.add_argument("--model", help="timm name, hf-hub:ORG/NAME, local-dir:PATH or a run folder (default: the "
                   "recipe's; quickstart: the bundled backbone)")
    p.add_argument("--batch-size", type=int, help="minibatch size (default: the recipe's data.batch_size)")
    p.add_argument("--image-size", type=int, help="input height and width (default: the model's input size)")
    p.add_argument("--methods", default="natural,fgsm-rs,free,pgd",
                   help="comma-separated methods to time; natural is always timed, as the cost unit")
    p.add_argument("--steps", type=int, default=10, help="timed minibatches per method (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed minibatches per method before timing")
    p.add_argument("--epochs", type=int, help="run length E for the per-run relative cost (default: the recipe's "
                   "train.epochs)")
    p.add_argument("--num-classes", type=int, help="classifier head size (default: the model's own)")
    p.add_argument("--mixed-precision", metavar="auto|no|bf16|fp16", help="autocast precision (default: the "
                   "recipe's train.mixed_precision; auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for model and inputs")
    p.add_argument("--recipe", default="quickstart", help="recipe YAML path or shipped recipe name to take the "
                   "settings from")
    p.add_argument("--output", metavar="FILE.json", help="also write the results as JSON")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key, e.g. --set method.steps=10 --set method.replays=8")
    g = p.add_argument_group("side by side with peers (--peers)")
    g.add_argument("--peers", action="store_true", help="time robustify's methods next to a plain PyTorch natural "
                   "loop, FGSM-RS written as the Fast AT reference code does, and IBM ART's FBF trainer (if "
                   "installed: pip install -e '.[bench]'), interleaved in one process; ratios to the plain loop")
    g.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one epoch of every runner each)")
    g.add_argument("--batches", type=int, default=8, help="minibatches per epoch")
    g = p.add_argument_group("time to robustness (--time-to-robust)")
    g.add_argument("--time-to-robust", action="store_true", help="fgsm-rs fine-tuning from the pretrained "
                   "backbone vs PGD-AT from scratch on the recipe's data (default: the quickstart): wall time and "
                   "passes each needs to first reach the same PGD accuracy on the test split (pretraining excluded)")
    g.add_argument("--scratch-epochs", default="15,30,60", help="epoch budget(s) of the from-scratch PGD-AT run: "
                   "tried shortest first, each from a fresh init, until one reaches the target (default: %(default)s)")
    g.add_argument("--scratch-steps", type=int, default=7, help="PGD steps of the from-scratch run (7-10)")
    g.add_argument("--target-acc", type=float, help="robust accuracy to reach (default: the best the fine-tuning "
                   "run reaches)")
    g.add_argument("--limit-train", type=int, help="use only the first N training examples")
    g.add_argument("--limit-eval", type=int, help="evaluate on only the first N test examples")
    g = p.add_argument_group("data pipeline (--data)")
    g.add_argument("--data", metavar="SPEC", help="also time the data pipeline alone (decode + augment per worker) "
                   "for this data set, next to the step, and say which bounds training; 'imagenet-like': decode "
                   "figures per core (bare JPEG decode, timm, robustify) on ImageNet-like JPEGs made by the command")
    g.add_argument("--data-images", type=int, default=256, help="examples decoded and augmented for --data")
    p.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from .bench.steps import main as bench

    if args.time_to_robust:
        from .bench.time_to_robust import main as ttr

        ttr(recipe=args.recipe, overrides=args.overrides, scratch_epochs=args.scratch_epochs,
            finetune_epochs=args.epochs, target_acc=args.target_acc, scratch_steps=args.scratch_steps,
            limit_train=args.limit_train, limit_eval=args.limit_eval, output=args.output)
        return 0
    if args.peers:
        from .bench.peers import main as peers

        peers(recipe=args.recipe, model=args.model, batch_size=args.batch_size, image_size=args.image_size,
              methods=args.methods, rounds=args.rounds, batches=args.batches, warmup=min(args.warmup, 1),
              num_classes=args.num_classes, mixed_precision=args.mixed_precision, channels_last=args.channels_last,
              overrides=args.overrides, output=args.output)
        return 0
    bench(data=args.data, data_images=args.data_images,
          recipe=args.recipe, model=args.model, batch_size=args.batch_size, image_size=args.image_size,
          methods=args.methods, steps=args.steps, warmup=args.warmup, epochs=args.epochs,
          num_classes=args.num_classes, mixed_precision=args.mixed_precision, channels_last=args.channels_last,
          overrides=args.overrides, output=args.output)
    return 0


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", formatter_class=_Formatter,
        help="honest robustness evaluation: clean, PGD, AutoAttack, accuracy vs eps, gradient-masking checks",
        description="Evaluate any model 'finetune' accepts (a run folder, hf-hub:ORG/NAME, local-dir:PATH, a timm "
                    "name) on the first N examples of a split: clean accuracy, FGSM, PGD with restarts on the CE and "
                    "margin losses, AutoAttack (APGD-CE, APGD-T, FAB-T, Square; optional extra: pip install "
                    "'robustify[autoattack]'), an accuracy-vs-eps curve, and checks that flag gradient masking. On a "
                    "run folder, data, eps and N default to the run's own, and the results update its metrics.json, "
                    "config.json and model card.",
    )
    p.add_argument("model", metavar="MODEL", help="run folder, hf-hub:ORG/NAME, local-dir:PATH or timm name")
    p.add_argument("--data", help="quickstart, cifar10, ORG/NAME, imagefolder:PATH or npz:PATH (run folder: its own)")
    p.add_argument("--split", help="split to evaluate on (run folder: its eval split; else test)")
    p.add_argument("--attack", default="clean,pgd,autoattack",
                   help="comma-separated: clean, pgd, autoattack (clean and one-step FGSM always run: the checks "
                        "compare against them)")
    p.add_argument("--eps", help="perturbation radius in [0,1] pixel units, e.g. 8/255 (run folder: its own)")
    p.add_argument("--norm", choices=("Linf", "L2"), help="threat model norm (run folder: its own; else Linf)")
    p.add_argument("--n-examples", type=int, help="evaluate the first N examples of the split (run folder: as in "
                                                  "its metrics.json; else 1000)")
    p.add_argument("--preset", default="standard", choices=("standard", "quick"),
                   help="standard: PGD-50 x 10 restarts and AutoAttack standard (the final report); quick: PGD-10 x 1 "
                        "and a reduced AutoAttack, labelled 'quick' (a first look)")
    p.add_argument("--pgd-steps", type=int, help="PGD steps (default: from --preset)")
    p.add_argument("--pgd-restarts", type=int, help="PGD random restarts per loss (default: from --preset)")
    p.add_argument("--pgd-loss", default="ce,cw", help="PGD losses: ce, cw (the margin loss) or ce,cw")
    p.add_argument("--aa-version", choices=("standard", "quick"), help="AutoAttack budget (default: from --preset)")
    p.add_argument("--no-curve", action="store_true", help="skip the accuracy-vs-eps curve")
    p.add_argument("--no-checks", action="store_true", help="skip the gradient-masking checks")
    p.add_argument("--seed", type=int, default=0, help="seed of every attack's randomness")
    p.add_argument("--batch-size", type=int, default=250, help="examples per attack batch")
    p.add_argument("--output", metavar="FILE.json", help="write the full report as JSON (and FILE_eps_curve.png)")
    p.add_argument("--plot", metavar="FILE.png", help="write the accuracy-vs-eps plot here")
    p.add_argument("--no-update", action="store_true", help="leave a run folder's metrics.json and card unchanged")
    p.set_defaults(handler=_run_eval)


def _check_eval_args(args: argparse.Namespace) -> None:
    """What would otherwise fail only after every attack has run (or silently mean something else): checked first."""
    from .fileio import check_output_file
    from .models import resolve_spec

    for flag in ("n_examples", "batch_size", "pgd_steps", "pgd_restarts"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} {value} is not accepted; use 1 or more")
    for flag in ("output", "plot"):
        if getattr(args, flag) is not None:
            check_output_file(getattr(args, flag), f"--{flag}")
    resolve_spec(args.model)  # a missing path or an unknown name, before any data is loaded


def _run_eval(args: argparse.Namespace) -> int:
    import time

    from .config import parse_number
    from .evaluate.report import run_eval
    from .report import checks_table, eps_curve_table, eval_table, print_table

    start = time.perf_counter()
    _check_eval_args(args)
    attacks = tuple(a.strip() for a in args.attack.split(",") if a.strip())
    eps = parse_number(args.eps, "--eps") if args.eps is not None else None
    res = run_eval(args.model, data=args.data, split=args.split, eps=eps, norm=args.norm, n_examples=args.n_examples,
                   attacks=attacks, preset=args.preset, pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts,
                   pgd_loss=args.pgd_loss, aa_version=args.aa_version, curve=not args.no_curve,
                   checks=not args.no_checks, seed=args.seed, batch_size=args.batch_size, output=args.output,
                   plot=args.plot, update_run=not args.no_update)
    report = res.report
    if not res.main:
        return 0
    print_table(eval_table(report))
    if "eps_curve" in report:
        print_table(eps_curve_table(report))
    if "checks" in report:
        print_table(checks_table(report))
    print(f"{report['n_examples']} examples (first {report['n_examples']} of {report['subset']['split']}, sha256 "
          f"{report['subset']['sha256_16']}), seed {args.seed}, on {report['device']}, "
          f"{time.perf_counter() - start:.1f} s")
    if res.not_updated:
        print(f"run folder not updated: {res.not_updated}")
    if res.update_note:
        print(f"run folder: the evaluation was {res.update_note}")
    if res.written:
        print(f"wrote: {', '.join(res.written)}")
    return 0


def _recipes_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipes", formatter_class=_Formatter, help="the shipped recipes: what, threat model, passes, cost, expected",
        description="A table of the shipped recipes: backbone, data, method, threat model (with the resolution the "
                    "attack lives at), epochs per stage, global batch, planned forward/backward example passes, an "
                    "H100-hours estimate (from assumed throughputs, not measured) and the expected result with its "
                    "source. 'robustify finetune --recipe NAME --dry-run' shows one recipe's full plan.",
    )
    p.set_defaults(handler=_run_recipes)


def _run_recipes(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .recipes import THROUGHPUT_NOTE, catalogue_table, recipes_dir

    Console().print(catalogue_table())
    print(f"recipes from {recipes_dir()}; H100-hours: {THROUGHPUT_NOTE}")
    print("details: robustify finetune --recipe NAME --dry-run")
    return 0


# Each entry adds one subcommand's parser; the modules named in the handlers own the work.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _finetune_parser, _eval_parser, _push_parser, _pull_parser, _zoo_parser, _bench_parser, _recipes_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustify", formatter_class=_Formatter,
        description="Make any pretrained timm image backbone adversarially robust, cheaply: adversarial fine-tuning "
                    "(FGSM-RS, free, PGD) with a slow-start/fast-decay schedule, honest evaluation, Hub publishing.",
        epilog="Run 'robustify COMMAND --help' for a command's options. Distributed: 'accelerate launch -m "
               "robustify finetune ...' or 'torchrun --nproc_per_node N -m robustify finetune ...'.",
    )
    parser.add_argument("--version", action="version", version=f"robustify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        print(f"robustify: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, always
        return e.exit_code
    except Interrupted as e:
        print(f"robustify: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("robustify: interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130
    finally:
        if "robustify.runlock" in sys.modules:  # the command is over: its run folder is free again
            sys.modules["robustify.runlock"].release_all()


if __name__ == "__main__":
    sys.exit(main())
