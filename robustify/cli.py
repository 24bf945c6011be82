"""The ``robustify`` command. Thin: parses arguments and calls the modules that own each idea.

User errors (:class:`robustify.errors.UserError`) print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from . import __version__
from .errors import UserError

Handler = Callable[[argparse.Namespace], int | None]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _finetune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", formatter_class=_Formatter,
        help="adversarially fine-tune a pretrained backbone (no arguments: the offline quickstart)",
        description="Adversarially fine-tune a timm backbone. With no arguments it runs recipes/quickstart.yaml: a "
                    "small pretrained backbone and data set shipped with robustify, offline, in about a minute on a "
                    "laptop CPU. Flags override the recipe; --set overrides any recipe key.",
    )
    p.add_argument("--recipe", default="quickstart", help="recipe YAML path or shipped recipe name")
    p.add_argument("--model", help="timm name, hf-hub:ORG/NAME, local-dir:PATH or a run folder (recipe: model.name)")
    p.add_argument("--data", help="quickstart, cifar10, ORG/NAME, imagefolder:PATH or npz:PATH (recipe: data.name)")
    p.add_argument("--method", help="natural | fgsm-rs | free | pgd (recipe: method.name)")
    p.add_argument("--eps", help="perturbation radius in [0,1] pixel units, e.g. 8/255 (recipe: threat.eps)")
    p.add_argument("--epochs", help="epochs before dividing by m for free AT (recipe: train.epochs)")
    p.add_argument("--output-dir", help="run folder; {time} expands to a timestamp (recipe: output_dir)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output-dir")
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
    cfg = build_config(args.recipe, overrides)
    finetune(cfg, resume=args.resume)
    return 0


# Each entry adds one subcommand's parser; the modules named in the handlers own the work.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_finetune_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustify", formatter_class=_Formatter,
        description="Make any pretrained timm image backbone adversarially robust, cheaply: adversarial fine-tuning "
                    "(FGSM-RS, free, PGD) with a slow-start/fast-decay schedule, honest evaluation, Hub publishing.",
        epilog="Run 'robustify COMMAND --help' for a command's options. Distributed: "
               "'accelerate launch -m robustify finetune ...' or 'torchrun --nproc_per_node N -m robustify finetune ...'.",
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
