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
from .errors import UserError

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
    p.add_argument("--method", help="natural | fgsm-rs | free | pgd " + recipe("method.name", "method"))
    p.add_argument("--eps", help="perturbation radius in [0,1] pixel units, e.g. 8/255 " + recipe("threat.eps", "eps"))
    p.add_argument("--epochs", help="epochs (divided by m for free AT) " + recipe("train.epochs", "epochs"))
    p.add_argument("--output-dir", help="run folder; {time} expands to a timestamp "
                   + recipe("output_dir", "output_dir"))
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --output-dir (with that run's recipe.yaml unless --recipe)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key, e.g. --set schedule.lr=0.1 --set method.replays=8")
    p.set_defaults(handler=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from .config import build_config
    from .trainer import finetune

    overrides = list(args.overrides)
    for flag, key in (("model", "model.name"), ("data", "data.name"), ("method", "method.name"),
                      ("eps", "threat.eps"), ("epochs", "train.epochs"), ("output_dir", "output_dir")):
        value = getattr(args, flag)
        if value is not None:
            overrides.insert(0, f"{key}={value}")
    recipe = args.recipe
    if args.resume:
        if args.output_dir is None:
            raise UserError("--resume needs --output-dir RUN_DIR: the folder of the run to continue")
        saved = Path(args.output_dir) / "recipe.yaml"
        if saved.is_file() and args.recipe == "quickstart":  # continue with the run's own resolved recipe
            recipe = str(saved)
    cfg = build_config(recipe, overrides)
    finetune(cfg, resume=args.resume)
    return 0


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
    from .hub import load_spec, push, usage_text

    res = push(args.run_dir, args.repo_id, private=args.private, revision=args.revision, commit_message=args.message)
    verb = "created and pushed" if res.created else "pushed"
    print(f"{verb} {len(res.files)} files to {res.repo_id} ({res.revision}) in commit {res.commit[:8]}: "
          f"{', '.join(res.files)}")
    print(f"commit: {res.url}")
    print(usage_text(res.repo_id, args.revision))
    print(f"zoo: to list it in 'robustify zoo', add zoo/NAME.yaml with hub_id: {res.repo_id} and the card's "
          f"robustbench fields (load spec {load_spec(res.repo_id, args.revision)})")
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
    from .hub import card_summary, pull, usage_text

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
    from .zoo import load_zoo, print_list

    entries = load_zoo()
    if not entries:
        print("the zoo is empty (no zoo/*.yaml files found)")
        return 0
    print_list(entries)
    print("details: robustify zoo show NAME")
    return 0


def _run_zoo_show(args: argparse.Namespace) -> int:
    from .zoo import get_entry, show_text

    print(show_text(get_entry(args.name)))
    return 0


# Each entry adds one subcommand's parser; the modules named in the handlers own the work.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _finetune_parser, _push_parser, _pull_parser, _zoo_parser,
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
        print(f"robustify: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("robustify: interrupted; completed epochs are checkpointed, continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
