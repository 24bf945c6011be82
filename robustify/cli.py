"""The ``robustify`` command. Thin: parses arguments and calls the modules that own each idea.

User errors (:class:`robustify.errors.UserError`) and argument mistakes print one line and exit with status 2,
without a traceback or the usage block. ``--json`` commands print one JSON document on stdout and nothing else.

Must not: hold logic of its own beyond parsing and printing: every decision lives in the wing that owns it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO

from . import __version__
from .errors import Interrupted, UserError, did_you_mean
from .runfolder import RECIPE

Handler = Callable[[argparse.Namespace], int | None]


class _Deferred(str):
    """A help text written only when help is shown: ``--set``'s list of options asks the registries (which import
    torch and timm), which every other command would otherwise pay for when the parser is built."""

    def __new__(cls, render: Callable[[], str]) -> _Deferred:
        text = super().__new__(cls, "(written when help is shown)")
        text.render = render  # type: ignore[attr-defined]
        return text


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default only when it has one (recipe-backed flags say their recipe key and value instead)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action.help, _Deferred):
            return action.help.render().replace("%", "%%")  # type: ignore[attr-defined]
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _set_help() -> str:
    """``finetune --set``'s help: each registered option from its own declaration (its keys and title,
    train/options/), then the frontier keys that are not options."""
    text = "override any recipe key, e.g. --set schedule.lr=0.1 --set method.replays=8"
    try:
        from . import sections

        listed = "; ".join(unit.usage() for unit in sections.options())
    except Exception:  # noqa: BLE001 - help must render even from a broken install
        return f"{text}; the options: docs/configuration.md"
    return (f"{text}; options (docs/methods-frontier.md, docs/seed-methods.md): {listed}; also data.per_class=K "
            "(few-shot), threat.norm=L1, method.loss=trades")


def _precision_help() -> str:
    """``bench --mixed-precision``'s help: the config's precision choices, with what each option that implements a
    precision itself declares of it (train/options/, through robustify/sections.py)."""
    from . import config, sections

    own = "".join(f"; {value}: {unit.precision_help}" for value, unit in sections.declared("precision").items())
    return (f"training precision, one of {'|'.join(config.choices()['train.mixed_precision'])} (default: the "
            f"recipe's train.mixed_precision; auto: bf16 autocast on CUDA, fp32 on CPU{own})")


class _Parser(argparse.ArgumentParser):
    """Argument mistakes (an unknown flag, a missing argument, a bad choice) are one line like every other user
    error: ``robustify: error: ...`` naming the value, then where to look, and status 2. ``--help`` is unchanged."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"robustify: error: {' '.join(message.split())}; see '{self.prog} --help'\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:  # named by the command they were given to, with the closest flag it has
            parser = self._chosen(ns)
            flags = [o for a in parser._actions for o in a.option_strings]
            unknown = [e for e in extras if e.startswith("-")]  # (an unknown option's value is not named again)
            parts = [f"unknown option {e!r}" + (f" ({hint})" if (hint := did_you_mean(e.split("=", 1)[0], flags,
                                                                                       quote="")) else "")
                     for e in unknown]
            parser.error("; ".join(parts or [f"unexpected argument {e!r}" for e in extras]))
        return ns

    def _chosen(self, ns: argparse.Namespace) -> argparse.ArgumentParser:
        """The (sub)command parser the arguments selected, e.g. the one of ``robustify zoo show``."""
        parser: argparse.ArgumentParser = self
        while True:
            sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            name = getattr(ns, sub.dest, None) if sub is not None else None
            if sub is None or name not in sub.choices:
                return parser
            parser = sub.choices[name]


def _add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout and nothing else "
                                                       "(progress and notes go to stderr)")


@contextlib.contextmanager
def _stdout_for_json() -> Iterator[TextIO]:
    """While a ``--json`` command works, whatever it prints (robustify, a library, a worker process) goes to
    stderr, so that stdout holds the JSON only; yields the real stdout to write the JSON to afterwards."""
    out = sys.stdout
    out.flush()
    try:
        saved: int | None = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError):  # no file descriptor 1 (an embedding host): Python-level redirection only
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield out
    finally:
        out.flush()  # anything written to the real stdout meanwhile still goes to stderr
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _print_json(out: TextIO, obj: Any) -> None:
    out.write(json.dumps(obj, indent=2) + "\n")
    out.flush()


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


# the --data and --model forms --help names (robustify.data.sources.ACCEPTED and models.resolve_spec own them; not
# imported here, since --help must not import torch; tests/test_docs_reference.py checks they agree)
DATA_FORMS = ("quickstart, cifar10, cifar100, mnist, imagenet-1k, tiny-imagenet, ORG/NAME (a Hub data set), "
              "imagefolder:PATH, disk:PATH, parquet:PATH_OR_GLOB or npz:PATH")
MODEL_FORMS = ("quickstart, a timm name (resnet50.a1_in1k), hf-hub:ORG/NAME, local-dir:PATH, a run folder or "
               "zoo:NAME (a model from 'robustify zoo list')")


def _finetune_parser(sub: argparse._SubParsersAction) -> None:
    try:
        from .recipes import quickstart_help_text

        measured = quickstart_help_text()
    except Exception:  # noqa: BLE001 - help must render even from a broken install
        measured = "in about a minute on a laptop CPU"
    p = sub.add_parser(
        "finetune", formatter_class=_Formatter,
        help="adversarially fine-tune a pretrained backbone (no arguments: the offline quickstart)",
        description="Adversarially fine-tune a timm backbone. With no arguments it runs recipes/quickstart.yaml: a "
                    f"small pretrained backbone and data set shipped with robustify, offline, {measured}. With --model "
                    "or --data and no --recipe it starts from the documented defaults instead (its first line says "
                    "so). Flags override the recipe; --set overrides any recipe key.",
    )
    q = _quickstart_defaults()

    def recipe(key: str, flag: str) -> str:
        """The flag's recipe key, its value in the quickstart and its default (with --model or --data)."""
        try:
            from .config import FinetuneConfig

            default: Any = FinetuneConfig()
            for part in key.split("."):
                default = getattr(default, part)
            if isinstance(default, float):  # eps 8/255 reads as 8/255, not 0.03137
                from .publish.runrecord import eps_text

                default = eps_text(default)
        except Exception:  # noqa: BLE001 - help must render even from a broken install
            return f"(recipe key {key})"
        return (f"(recipe key {key}; quickstart: {q[flag]}; default: {default})" if flag in q else
                f"(recipe key {key}; default: {default})")

    p.add_argument("--recipe", help="recipe YAML path or shipped recipe name (with --resume: the run's own "
                   "recipe.yaml, and an explicit --recipe must be the run's recipe) (default: quickstart when "
                   "neither --model nor --data is given; with either, no recipe: the defaults of "
                   "docs/configuration.md, e.g. eps 8/255, batch 128, PGD-20 on 1000 examples)")
    p.add_argument("--model", help=f"{MODEL_FORMS} " + recipe("model.name", "model"))
    p.add_argument("--data", help=f"{DATA_FORMS} " + recipe("data.name", "data"))
    p.add_argument("--method",
                   help="natural | fgsm-rs | n-fgsm | free | deat | pgd | apgd " + recipe("method.name", "method"))
    p.add_argument("--eps", help="perturbation radius in [0,1] pixel units, e.g. 8/255; for threat.norm L1 summed "
                   "over the image, e.g. 12 " + recipe("threat.eps", "eps"))
    p.add_argument("--epochs", help="epochs (divided by m for free AT) " + recipe("train.epochs", "epochs"))
    p.add_argument("--output-dir", help="run folder; {time} expands to a timestamp "
                   + recipe("output_dir", "output_dir"))
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --output-dir (with that run's recipe.yaml unless --recipe)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickle model.checkpoint (.pth, .bin), which can run code when loaded "
                        "(recipe key model.trust_pickle)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=_Deferred(_set_help))
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, stages, planned passes and cost estimate, check the model and "
                        "data, and exit without training or writing anything")
    p.add_argument("--limit-train", type=int, metavar="N", help="train on the first N examples only (recipe key "
                   "data.max_train_examples), for a quick trial: the held-out probe and the batch shrink to fit, "
                   "and the run's first lines say so")
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
    if args.model and args.model.startswith("zoo:") and not args.dry_run:
        _ensure_zoo_model(args.model, args.trust_pickle)
    recipe = default_recipe(args)
    if args.limit_train is not None:  # the same shrink on --resume (it depends only on the arguments and world size)
        for note in _quick_trial(recipe, overrides, args.limit_train):
            if os.environ.get("RANK", "0") == "0":  # once under a launcher (every process runs this)
                print(f"robustify: {note}")
    if args.dry_run:
        from .recipes import dry_run

        print(dry_run(recipe, overrides))
        return 0
    from .train.trainer import finetune

    if args.resume:
        if args.output_dir is None:
            raise UserError("--resume needs --output-dir RUN_DIR: the folder of the run to continue")
        saved = Path(args.output_dir) / RECIPE
        if saved.is_file() and args.recipe is None:  # continue with the run's own resolved recipe; an explicit
            recipe = str(saved)  # --recipe is compared with the run's (trainer.check_resume, the checkpoint's)
    cfg = build_config(recipe, overrides)
    if recipe is None and os.environ.get("RANK", "0") == "0":  # the one case where no recipe file is in force
        from .recipes import DEFAULTS_TEXT

        print(f"robustify: settings: {DEFAULTS_TEXT}")
    if not args.resume and args.output_dir is None and recipe is not None:
        rerun = _rerun_output_dir(recipe, cfg.output_dir)
        if rerun:
            print(f"robustify: {recipe} is the recipe of the run in {cfg.output_dir}; this new run goes to {rerun}")
            cfg.output_dir = rerun
    finetune(cfg, resume=args.resume)
    return 0


def _quick_trial(recipe: str, overrides: list[str], limit: int) -> list[str]:
    """``--limit-train N`` is a quick trial: what depends on the number of training examples shrinks to fit it
    instead of refusing the run. The held-out probe (``train.probe_size``, default 256) becomes a quarter of N and
    the per-process batch at most what is left, each only when it would not fit and was not given on the command
    line (``--set`` keeps its one-line refusal). Appends the overrides; returns one line per change, for the run's
    first lines."""
    from .config import build_config

    given = {o.split("=", 1)[0].strip() for o in overrides}  # on the command line (--set or a flag)
    cfg = build_config(recipe, overrides)
    if cfg.train.probe_split != "heldout" or cfg.data.max_train_examples != limit:
        return []
    world = max(int(os.environ.get("WORLD_SIZE", "1") or 1), 1)
    probe, batch = cfg.train.probe_size, cfg.data.batch_size
    if probe < limit and limit - probe >= batch * world:
        return []  # it fits as it is
    notes = []
    if "train.probe_size" not in given and probe > limit // 4:
        probe = max(limit // 4, 1)
        overrides.append(f"train.probe_size={probe}")
        notes.append(f"quick trial (--limit-train {limit}): train.probe_size {cfg.train.probe_size} -> {probe}, held "
                     f"out of the {limit} training examples (--set train.probe_size=N to choose)")
    left = limit - probe
    if "data.batch_size" not in given and left // world >= 2 and batch * world > left:  # BatchNorm needs 2
        batch = left // world
        overrides.append(f"data.batch_size={batch}")
        notes.append(f"quick trial (--limit-train {limit}): data.batch_size {cfg.data.batch_size} -> {batch}, the "
                     f"{left} examples left after the probe (--set data.batch_size=N to choose)")
    return notes


def default_recipe(args: argparse.Namespace) -> str | None:
    """The recipe a ``finetune`` without ``--recipe`` starts from. Bare ``robustify finetune`` (flags such as --eps
    included) is the quickstart; once --model or --data names something else to train, the quickstart's small-data
    settings (eps 0.1, batch 64, 500 examples) would be a surprise, so it starts from the documented defaults
    (``None``: FinetuneConfig's, the default column of docs/configuration.md)."""
    if args.recipe is not None:
        return args.recipe
    return None if (args.model is not None or args.data is not None) else "quickstart"


def _rerun_output_dir(recipe: str, output_dir: str) -> str | None:
    """A run's own recipe.yaml names the run's folder; rerunning it writes beside it (``RUN-rerun-{time}``)."""
    path = Path(recipe).expanduser()
    if path.name != RECIPE or not path.is_file() or "{time}" in output_dir:
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
    from .publish.hub import push, read_run_folder, usage_text
    from .publish.importer import push_imported, read_provenance

    if read_provenance(Path(args.run_dir).expanduser()) is not None:  # robustify import / pull robustbench:NAME
        commit, url, files = push_imported(args.run_dir, args.repo_id, private=args.private, revision=args.revision,
                                           commit_message=args.message)
        print(f"pushed {args.repo_id} in one commit {commit[:8]}: {', '.join(files)}")
        print(f"commit: {url}")
        print(usage_text(args.repo_id.removeprefix("hf-hub:"), args.revision))
        return 0

    res = push(args.run_dir, args.repo_id, private=args.private, revision=args.revision, commit_message=args.message)
    if res.changed:
        verb = "created and pushed" if res.created else "pushed"
        print(f"{verb} {res.repo_id} ({res.revision}) in one commit {res.commit[:8]}: {', '.join(res.files)}")
    else:
        print(f"nothing to push: {res.repo_id} ({res.revision}) already holds these files at commit {res.commit[:8]}")
    if args.private and not res.created:
        print(f"note: {res.repo_id} already existed; --private did not change its visibility")
    print(f"commit: {res.url}")
    if "robustbench.json" not in res.files:
        from .publish.robustbench import protocol_check

        why = protocol_check(read_run_folder(args.run_dir).record)[1]
        print(f"robustbench.json (RobustBench model_info) not written: not comparable: {why}")
    print(usage_text(res.repo_id, args.revision))
    rev = f" --revision {args.revision}" if args.revision else ""
    print(f"to list it in 'robustify zoo': robustify zoo add {shlex.quote(str(args.run_dir))} --repo-id "
          f"{res.repo_id}{rev} (writes zoo/NAME.yaml from the run's record), then open a pull request with that file")
    return 0


def _pull_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pull", formatter_class=_Formatter, help="download a robust model from the Hub and check that it loads",
        description="Download a timm model repo (into the Hugging Face cache, or --local-dir), check that it loads "
                    "with timm and print how to use it. Pickle weights (.bin, .pth, ...) are refused unless "
                    "--trust-pickle is given.",
    )
    p.add_argument("repo_id", metavar="ORG/NAME", help="the model repo (hf-hub:ORG/NAME is accepted too), a zoo "
                   "name ('robustify zoo list'): downloaded, imported if needed and checked into its zoo folder, or "
                   "robustbench:NAME: through RobustBench's own loader (the robustbench extra), converted and checked")
    p.add_argument("--revision", metavar="REV", help="branch, tag or commit id (default: main)")
    p.add_argument("--local-dir", metavar="DIR", help="download into DIR instead of the Hugging Face cache (a zoo "
                   "name: instead of its zoo folder; DIR must be new, empty or hold that model)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="also download and load pickle weights, which can run code when loaded")
    p.set_defaults(handler=_run_pull)


def _run_pull(args: argparse.Namespace) -> int:
    from .publish.hub import card_summary, pull, usage_text

    if args.repo_id.startswith("robustbench:"):  # RobustBench's loader downloads, robustify converts and checks
        from .publish.zoo import pull_robustbench_spec

        if args.revision is not None:
            raise UserError(f"--revision is not accepted with {args.repo_id}: RobustBench's files have no revisions")
        folder, done = pull_robustbench_spec(args.repo_id, local_dir=args.local_dir)
        print(f"{args.repo_id}: {done}")
        print(f'use it: timm.create_model("local-dir:{folder}", pretrained=True); publish it: robustify push '
              f"{shlex.quote(str(folder))} --repo-id ORG/NAME")
        return 0
    if "/" not in args.repo_id:  # a zoo name: download, import and check it in one step
        return _run_pull_zoo(args)

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
    listing = zsub.add_parser("list", help="a table of every model in the zoo")
    _add_json(listing, "the entries")
    listing.set_defaults(handler=_run_zoo_list)
    show = zsub.add_parser("show", help="one model in full: fields, how to load it, the recipe that made it")
    show.add_argument("name", metavar="NAME", help="a name from 'robustify zoo list' (or its Hub id)")
    _add_json(show, "the entry, with its load and recipe commands,")
    show.set_defaults(handler=_run_zoo_show)
    _zoo_more_parsers(zsub)
    p.set_defaults(handler=_run_zoo_list)


def _run_zoo_list(args: argparse.Namespace) -> int:
    from .publish.zoo import entry_json, load_zoo, print_list

    entries = load_zoo()
    if getattr(args, "json", False):  # bare 'robustify zoo' has no --json
        _print_json(sys.stdout, [entry_json(e) for e in entries])
        return 0
    if not entries:
        print("the zoo is empty (no zoo/*.yaml files found)")
        return 0
    print_list(entries)
    print("details: robustify zoo show NAME")
    return 0


def _run_zoo_show(args: argparse.Namespace) -> int:
    from .publish.zoo import entry_json, get_entry, show_text

    entry = get_entry(args.name)
    if args.json:
        _print_json(sys.stdout, entry_json(entry))
    else:
        print(show_text(entry))
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
    p.add_argument("--mixed-precision", metavar="PRECISION", help=_Deferred(_precision_help))
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for model and inputs")
    p.add_argument("--recipe", default="quickstart", help="recipe YAML path or shipped recipe name to take the "
                   "settings from")
    p.add_argument("--output", metavar="FILE.json", help="also write the results as JSON")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key, e.g. --set method.steps=10 --set method.replays=8")
    _add_json(p, "the report (what --output writes; with --peers, --time-to-robust or --data too)")
    g = p.add_argument_group("side by side with peers (--peers)")
    g.add_argument("--peers", action="store_true", help="time robustify's methods next to a plain PyTorch natural "
                   "loop, FGSM-RS written as the Fast AT reference code does, and IBM ART's FBF trainer (if "
                   "installed: pip install -e '.[bench]'), interleaved in one process; ratios to the plain loop")
    g.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one epoch of every runner each)")
    g.add_argument("--batches", type=int, default=8, help="minibatches per epoch")
    g = p.add_argument_group("common corruptions (--corruptions)")
    g.add_argument("--corruptions", action="store_true", help="images/s per CPU core of each of the 15 common "
                   "corruptions at 32 and 224 px, and what an ImageNet-C-sized evaluation costs on this machine")
    g.add_argument("--corruption-images", type=int, default=8, metavar="N", help="images per corruption and "
                   "severity (default 8)")
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
    if args.json:
        with _stdout_for_json() as out:
            report = _bench(args, show=False)
        _print_json(out, report)
    else:
        _bench(args, show=True)
    return 0


def _bench(args: argparse.Namespace, show: bool) -> dict[str, Any]:
    """Run the bench ``args`` ask for; ``show``: print its table (the notes are printed either way)."""
    from .bench.steps import main as bench

    if args.corruptions:
        from .bench.corruptions import main as corruption_bench

        if args.corruption_images < 1:
            raise UserError(f"--corruption-images {args.corruption_images} is not accepted; use 1 or more")
        return corruption_bench(args.corruption_images, output=args.output, show=show)
    if args.time_to_robust:
        from .bench.time_to_robust import main as ttr

        return ttr(recipe=args.recipe, overrides=args.overrides, scratch_epochs=args.scratch_epochs,
                   finetune_epochs=args.epochs, target_acc=args.target_acc, scratch_steps=args.scratch_steps,
                   limit_train=args.limit_train, limit_eval=args.limit_eval, output=args.output)
    if args.peers:
        from .bench.peers import main as peers

        return peers(recipe=args.recipe, model=args.model, batch_size=args.batch_size, image_size=args.image_size,
                     methods=args.methods, rounds=args.rounds, batches=args.batches, warmup=min(args.warmup, 1),
                     num_classes=args.num_classes, mixed_precision=args.mixed_precision,
                     channels_last=args.channels_last, overrides=args.overrides, output=args.output, show=show)
    return bench(data=args.data, data_images=args.data_images,
                 recipe=args.recipe, model=args.model, batch_size=args.batch_size, image_size=args.image_size,
                 methods=args.methods, steps=args.steps, warmup=args.warmup, epochs=args.epochs,
                 num_classes=args.num_classes, mixed_precision=args.mixed_precision, channels_last=args.channels_last,
                 overrides=args.overrides, output=args.output, show=show)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", formatter_class=_Formatter,
        help="honest robustness evaluation: clean, PGD, AutoAttack, accuracy vs eps, gradient-masking checks, unseen "
             "threat models",
        description="Evaluate any model 'finetune' accepts (a run folder, hf-hub:ORG/NAME, local-dir:PATH, a timm "
                    "name) on the first N examples of a split: clean accuracy, FGSM, PGD with restarts on the CE and "
                    "margin losses, AutoAttack (APGD-CE, APGD-T, FAB-T, Square; optional extra: "
                    "pip install -e \".[autoattack]\" in the clone), an accuracy-vs-eps curve, checks that flag "
                    "gradient masking, and the unseen threat models (the other norms at their standard radii). "
                    "--attack runs exactly what it names; the first line says what will run and roughly how long it "
                    "takes. On a run folder, data, eps and N default to the run's own, and the results update its "
                    "metrics.json, config.json and model card.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_FORMS)
    p.add_argument("--data", help=f"{DATA_FORMS} (run folder: its own)")
    p.add_argument("--split", help="split to evaluate on (run folder: its eval split; else the data set's labelled "
                   "evaluation split: test, validation for imagenet-1k, valid for tiny-imagenet)")
    p.add_argument("--attack",
                   help="comma-separated suites, run exactly as named (clean always): clean, fgsm, pgd, autoattack, "
                        "curve (accuracy vs eps), checks (gradient masking), unseen (the other norms at their "
                        "standard radii: Linf 8/255, L2 0.5, L1 12 on CIFAR-like data; 4/255, 2.0, 255 on "
                        "ImageNet-like), corruptions (the 15 common corruptions at severities 1-5) (default: the "
                        "preset's full report, all but corruptions; without AutoAttack's optional package all but "
                        "autoattack, said in one line)")
    p.add_argument("--corruptions", metavar="NAMES", help="with --attack corruptions: corruption names or families "
                   "(noise, blur, weather, digital), comma-separated, or all (default: all 15)")
    p.add_argument("--severities", metavar="LIST", help="with --attack corruptions: severities, e.g. 1,3,5 or 1-5 "
                   "(default: all five)")
    p.add_argument("--corruption-source", choices=("auto", "published", "on-the-fly"), default="auto",
                   help="published: the authors' CIFAR-10-C / CIFAR-100-C / ImageNet-C images from the Hub (the only "
                        "numbers comparable with RobustBench); on-the-fly: corrupt the subset itself (any data); "
                        "auto: published where the data set has a known Hub copy")
    p.add_argument("--corruption-data", metavar="ORG/NAME", help="another Hub copy of the published corrupted set "
                   "(the authors' layout)")
    p.add_argument("--corruption-baseline", metavar="MODEL", help="the model mCE is relative to (default: a run's "
                   "base model; none: no mCE)")
    p.add_argument("--corruption-workers", type=int, metavar="N", help="processes corrupting batches beside an "
                   "accelerator (default: 0 on the CPU, else one per free core up to 8)")
    p.add_argument("--eps", help="perturbation radius in [0,1] pixel units, e.g. 8/255 (run folder: its own)")
    p.add_argument("--norm", choices=("Linf", "L2", "L1"), help="threat model norm (run folder: its own; else Linf); "
                   "L1: eps summed over the image, e.g. --eps 12 on CIFAR (Croce & Hein 2021)")
    p.add_argument("--n-examples", type=int, help="evaluate the first N examples of the split (run folder: as in "
                                                  "its metrics.json; else 1000)")
    p.add_argument("--preset", default="standard", choices=("standard", "quick"),
                   help="standard: PGD-50 x 10 restarts and AutoAttack standard (the final report); quick: PGD-10 x 1 "
                        "and a reduced AutoAttack, labelled 'quick' (a first look)")
    p.add_argument("--pgd-steps", type=int, help="PGD steps (default: from --preset)")
    p.add_argument("--pgd-restarts", type=int, help="PGD random restarts per loss (default: from --preset)")
    p.add_argument("--pgd-loss", default="ce+cw", help="PGD losses: ce, cw (the margin loss) or ce+cw, as the recipe "
                   "key eval.pgd_loss spells them (ce,cw is accepted too)")
    p.add_argument("--aa-version", choices=("standard", "quick"), help="AutoAttack budget (default: from --preset)")
    p.add_argument("--no-curve", action="store_true", help="drop the accuracy-vs-eps curve (suite curve)")
    p.add_argument("--no-checks", action="store_true", help="drop the gradient-masking checks (suite checks)")
    p.add_argument("--seed", type=int, default=0, help="seed of every attack's randomness")
    p.add_argument("--batch-size", type=int, default=250, help="examples per attack batch")
    p.add_argument("--output", metavar="FILE.json", help="write the full report as JSON (and FILE_eps_curve.png)")
    p.add_argument("--plot", metavar="FILE.png", help="write the accuracy-vs-eps plot here")
    p.add_argument("--no-update", action="store_true", help="leave a run folder's metrics.json and card unchanged")
    _add_json(p, "the full report (what --output writes)")
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
    from .evaluate.corruptions import settings_from

    settings_from(_corruption_options(args))  # a bad corruption or severity name, before anything is loaded


def _corruption_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"corruptions": args.corruptions, "severities": args.severities, "source": args.corruption_source,
            "data_repo": args.corruption_data, "baseline": args.corruption_baseline,
            "workers": args.corruption_workers}


def _run_eval(args: argparse.Namespace) -> int:
    if not args.json:
        return _eval(args)
    with _stdout_for_json() as out:
        report = _eval(args)
    if report is not None:  # the main process only
        _print_json(out, report)
    return 0


def _eval(args: argparse.Namespace) -> Any:
    """Evaluate; print the tables (not with --json) and the summary lines. Returns the report with --json."""
    import time

    from .config import parse_number
    from .evaluate.collectives import end_group
    from .evaluate.report import run_eval
    from .report import checks_table, eps_curve_table, eval_table, print_tables

    start = time.perf_counter()
    _check_eval_args(args)
    note = None
    if args.attack is None:
        from .evaluate.report import default_attacks

        attacks, note = default_attacks()
    else:
        from .evaluate.report import parse_attacks

        attacks = parse_attacks(args.attack)

    def announce(line: str) -> None:  # the first line: what will run and roughly how long; then the note, if any
        print(line, flush=True)
        if note:
            print(f"robustify: {note}", flush=True)

    eps = parse_number(args.eps, "--eps") if args.eps is not None else None
    res = run_eval(args.model, data=args.data, split=args.split, eps=eps, norm=args.norm, n_examples=args.n_examples,
                   attacks=attacks, preset=args.preset, pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts,
                   pgd_loss=args.pgd_loss, aa_version=args.aa_version, curve=False if args.no_curve else None,
                   checks=False if args.no_checks else None, seed=args.seed, batch_size=args.batch_size,
                   output=args.output, plot=args.plot, update_run=not args.no_update, announce=announce,
                   suite_options={"corruptions": _corruption_options(args)})
    end_group()  # every process is done with collectives (evaluate/collectives.py)
    report = res.report
    if not res.main:
        return None if args.json else 0
    if not args.json:
        print_tables([eval_table(report), *([eps_curve_table(report)] if "eps_curve" in report else []),
                      *([checks_table(report)] if "checks" in report else [])])
        if "corruptions" in report:
            from .evaluate.corruptions import markdown

            print(markdown(report["corruptions"]))
    print(f"{report['n_examples']} examples (first {report['n_examples']} of {report['subset']['split']}, sha256 "
          f"{report['subset']['sha256_16']}), seed {args.seed}, on {report['device']}, "
          f"{time.perf_counter() - start:.1f} s")
    if res.not_updated:
        print(f"run folder not updated: {res.not_updated}")
    if res.update_note:
        print(f"run folder: the evaluation was {res.update_note}")
    if res.written:
        print(f"wrote: {', '.join(res.written)}")
    return report if args.json else 0


def _recipes_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipes", formatter_class=_Formatter, help="the shipped recipes: what, threat model, passes, cost, expected",
        description="A table of the shipped recipes: backbone, data, method, threat model (with the resolution the "
                    "attack lives at), epochs per stage, global batch, planned forward/backward example passes, an "
                    "H100-hours estimate (from assumed throughputs, not measured) and the expected result with its "
                    "source. 'robustify finetune --recipe NAME --dry-run' shows one recipe's full plan.",
    )
    _add_json(p, "one object per recipe (every column, each stage, the expected result)")
    p.set_defaults(handler=_run_recipes)


def _run_recipes(args: argparse.Namespace) -> int:
    from .recipes import THROUGHPUT_NOTE, catalogue, catalogue_table, expected_cells, recipes_dir
    from .report import print_table

    rows = catalogue()
    if args.json:
        _print_json(sys.stdout, rows)
        return 0
    print_table(catalogue_table(rows))
    for note in expected_cells(rows)[1]:
        print(note)
    print(f"recipes from {recipes_dir()}; H100-hours: {THROUGHPUT_NOTE}")
    print("details: robustify finetune --recipe NAME --dry-run")
    return 0


def _import_parser(sub: argparse._SubParsersAction) -> None:
    from .publish import converters

    p = sub.add_parser(
        "import", formatter_class=_Formatter,
        help="convert a third-party robust checkpoint into a folder plain timm loads (with its provenance)",
        description="Convert a robust checkpoint (a local file or hf-hub:ORG/NAME/FILE) into the folder "
                    "given by --output-dir DIR: "
                    "model.safetensors + config.json as timm's save_for_hf writes them (mean/std in pretrained_cfg) "
                    "and a card stating the source repo, file, commit, sha256, license, threat model and published "
                    "numbers (reported by their source, not measured here). Pickles (.ckpt, .pt, .pth, .bin) are "
                    "opened only with --trust-pickle, through torch.load(weights_only=True). Formats: "
                    + "; ".join(f"{n}: {converters.get(n).description}" for n in converters.names()) + ".",
    )
    p.add_argument("source", metavar="SOURCE", nargs="?", help="checkpoint file or hf-hub:ORG/NAME/FILE")
    p.add_argument("--arch", metavar="TIMM_ARCH", help="timm architecture of the weights (madrylab: guessed from the "
                   "file name, e.g. resnet50_l2_eps3.ckpt -> resnet50)")
    p.add_argument("--format", default="auto", help="auto | " + " | ".join(converters.names()))
    p.add_argument("--output-dir", metavar="DIR", help="the folder to write (must not exist or be empty)")
    p.add_argument("--revision", metavar="REV", help="branch, tag or commit of the Hub repo (recorded as a commit)")
    p.add_argument("--trust-pickle", action="store_true", help="allow a pickle checkpoint (read with "
                   "torch.load(weights_only=True) only)")
    p.add_argument("--key", help="state-dict: the checkpoint entry holding the state dict (default: the first of "
                   "state_dict, model_state_dict, model, net, ema that holds tensors)")
    p.add_argument("--strip-prefix", action="append", metavar="PREFIX", help="state-dict: remove this key prefix "
                   "(repeatable; default: module., _orig_mod., model., backbone. when every key has it)")
    p.add_argument("--mean", help="state-dict: input mean, e.g. 0.485,0.456,0.406 (default: the architecture's)")
    p.add_argument("--std", help="state-dict: input std (default: the architecture's)")
    p.add_argument("--license", help="the source's license, for the card (e.g. mit)")
    p.add_argument("--norm", choices=("Linf", "L2"), help="threat model the weights were trained for, for the card")
    p.add_argument("--eps", help="eps they were trained for, e.g. 4/255, for the card")
    p.add_argument("--dataset", help="data set they were trained on, for the card")
    p.add_argument("--training", help="how they were trained, in words, for the card")
    p.add_argument("--refresh-card", metavar="FOLDER", help="instead of importing: re-render FOLDER's card from its "
                   "config.json and its eval.json (robustify eval FOLDER --output FOLDER/eval.json), showing the "
                   "published and the measured numbers side by side")
    p.set_defaults(handler=_run_import)


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} {text!r} is not accepted; use comma-separated numbers, e.g. 0.485,0.456,0.406") \
            from None
    if len(values) not in (1, 3):
        raise UserError(f"{flag} {text!r} is not accepted; give 1 or 3 values")
    return values


def _run_import(args: argparse.Namespace) -> int:
    from .publish.importer import import_checkpoint, refresh_card

    if args.refresh_card:
        print(f"re-rendered {refresh_card(Path(args.refresh_card))}")
        return 0
    if not args.source or not args.output_dir:
        raise UserError("robustify import needs SOURCE and --output-dir DIR (or --refresh-card FOLDER)")
    options = {"key": args.key, "strip_prefix": args.strip_prefix, "mean": _floats(args.mean, "--mean"),
               "std": _floats(args.std, "--std")}
    meta = {"license": args.license, "norm": args.norm, "eps": args.eps, "dataset": args.dataset,
            "training": args.training}
    res = import_checkpoint(args.source, args.output_dir, arch=args.arch, fmt=args.format,
                            trust_pickle=args.trust_pickle, revision=args.revision, options=options, meta=meta)
    prov = res.provenance
    print(f"imported {prov.source}" + (f" at {prov.revision[:8]}" if prov.revision else "")
          + f" with the {prov.converter} converter into {res.folder}")
    print(f"timm {res.architecture}, {res.num_classes} classes, input size {res.input_size}; logits of the folder "
          f"loaded with timm match the converted weights (max difference {res.max_logit_diff:.1e})")
    for d in prov.dropped:
        print(f"dropped: {d}")
    print(f'use it: timm.create_model("local-dir:{res.folder}", pretrained=True)')
    return 0


def _zoo_more_parsers(zsub: argparse._SubParsersAction) -> None:
    """``zoo compare`` and ``zoo add`` (added after list/show)."""
    cmp_ = zsub.add_parser("compare", help="place a run on RobustBench's leaderboard for its data set, threat model "
                           "and eps")
    cmp_.add_argument("run_dir", metavar="RUN", help="a finished, evaluated run folder")
    cmp_.add_argument("--offline", action="store_true", help="use the cached leaderboard only")
    cmp_.add_argument("--threat-model", choices=("run", "corruptions"), default="run",
                      help="run: the run's own norm and eps; corruptions: RobustBench's common-corruptions board "
                           "(from the run's corruptions.json)")
    cmp_.add_argument("--json", action="store_true", help="print the comparison as JSON")
    cmp_.set_defaults(handler=_run_zoo_compare)
    add = zsub.add_parser("add", help="write the zoo entry of a pushed run, after checking its published card")
    add.add_argument("run_dir", metavar="RUN", help="the run folder that was pushed")
    add.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="where it was pushed")
    add.add_argument("--name", help="the zoo name (default: from the repo name)")
    add.add_argument("--recipe", help="the recipe that made it (default: the run's recipe.yaml, as a path in the "
                     "model repo)")
    add.add_argument("--revision", metavar="REV", help="the published revision to check (default: main)")
    add.add_argument("--zoo-dir", metavar="DIR", help="where to write NAME.yaml (default: this checkout's zoo/)")
    add.add_argument("--force", action="store_true", help="replace an existing entry of the same name")
    add.set_defaults(handler=_run_zoo_add)


def _run_zoo_compare(args: argparse.Namespace) -> int:
    import json

    from .publish.hub import read_run_folder
    from .publish.robustbench import compare, compare_text

    run = read_run_folder(args.run_dir)
    if args.threat_model == "corruptions":
        from .publish.robustbench import compare_corruptions, compare_corruptions_text

        result = compare_corruptions(run.record, _corruptions_result(args.run_dir), offline=args.offline)
        print(json.dumps(result, indent=2) if args.json else compare_corruptions_text(result))
        return 0
    result = compare(run.record, offline=args.offline)
    print(json.dumps(result, indent=2) if args.json else compare_text(result))
    return 0


def _corruptions_result(run_dir: str) -> dict[str, Any] | None:
    """The run folder's corruptions.json (robustify eval --attack corruptions), or None."""
    from .runfolder import CORRUPTIONS_REPORT, RunFolder

    folder = RunFolder(run_dir)
    return folder.read_json(CORRUPTIONS_REPORT) if folder.has(CORRUPTIONS_REPORT) else None


def _run_zoo_add(args: argparse.Namespace) -> int:
    from .publish.zoo_add import add_entry

    path, notes = add_entry(args.run_dir, args.repo_id, name=args.name, recipe=args.recipe, revision=args.revision,
                            zoo_dir=args.zoo_dir, force=args.force)
    for n in notes:
        print(n)
    print(f"wrote {path}; check it with 'robustify zoo show {path.stem}', then open a pull request with the file")
    return 0


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", formatter_class=_Formatter, help="write a run's results in another format (RobustBench model_info)",
        description="Write a run's RobustBench model_info JSON (exactly RobustBench's fields and types), only from "
                    "the standard AutoAttack on RobustBench's protocol (the first 10,000 CIFAR / 5,000 ImageNet test "
                    "images at the data set's native resolution, at RobustBench's eps); otherwise one line says why "
                    "it cannot be written.",
    )
    p.add_argument("run_dir", metavar="RUN", help="a finished, evaluated run folder")
    p.add_argument("--robustbench", required=True, metavar="FILE.json", help="where to write the model_info JSON")
    p.add_argument("--name", help="model_info 'name' (the paper or model title; default: the run's description)")
    p.add_argument("--link", default="", help="model_info 'link' (paper or model page)")
    p.add_argument("--authors", default="", help="model_info 'authors'")
    p.add_argument("--venue", default="", help="model_info 'venue'")
    p.add_argument("--footnote", help="model_info 'footnote'")
    p.add_argument("--threat-model", choices=("run", "corruptions"), default="run",
                   help="run: the run's own norm and eps (AutoAttack); corruptions: RobustBench's corruptions "
                        "model_info, only from the published CIFAR-10-C / CIFAR-100-C images (the run's "
                        "corruptions.json)")
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .fileio import atomic_write_json, check_output_file
    from .publish.hub import read_run_folder
    from .publish.robustbench import model_info

    out = check_output_file(args.robustbench, "--robustbench")
    run = read_run_folder(args.run_dir)
    if args.threat_model == "corruptions":
        from .publish.robustbench import corruptions_model_info

        info = corruptions_model_info(run.record, _corruptions_result(args.run_dir), name=args.name, link=args.link,
                                      authors=args.authors, venue=args.venue, footnote=args.footnote)
        atomic_write_json(out, info)
        print(f"wrote {out}: {info['dataset']} corruptions: clean {info['clean_acc']}%, corruptions "
              f"{info['corruptions_acc']}%")
        return 0
    info = model_info(run.record, name=args.name, link=args.link, authors=args.authors, venue=args.venue,
                      footnote=args.footnote)
    atomic_write_json(out, info)
    print(f"wrote {out}: {info['dataset']} {run.record.training.norm} eps={info['eps']}: clean {info['clean_acc']}%, "
          f"AutoAttack {info['autoattack_acc']}%")
    return 0


def _run_pull_zoo(args: argparse.Namespace) -> int:
    from .publish.zoo import get_entry, pull_entry

    entry = get_entry(args.repo_id)
    if args.revision is not None:  # a flag is honoured or refused, never dropped
        raise UserError(f"--revision {args.revision!r} is not accepted with a zoo name: the entry {entry.name} pins "
                        f"its revision; for another one pull the repo itself: robustify pull {entry.hub_id} --revision "
                        f"{args.revision}")
    folder, done = pull_entry(entry, trust_pickle=args.trust_pickle, local_dir=args.local_dir)
    print(f"{entry.name}: {done}")
    print(f"loads with timm from {folder}")
    model = shlex.quote(str(folder)) if args.local_dir is not None else f"zoo:{entry.name}"
    print(f'use it: timm.create_model("local-dir:{folder}", pretrained=True); or robustify finetune --model '
          f"{model} --data DATA")
    return 0


def _ensure_zoo_model(spec: str, trust_pickle: bool) -> None:
    """``finetune --model zoo:NAME``: pull the zoo model first when it is not downloaded yet."""
    from .models import is_model_folder, zoo_folder
    from .publish.zoo import get_entry, pull_entry

    name = spec[len("zoo:"):]
    if not is_model_folder(zoo_folder(name)):
        folder, done = pull_entry(get_entry(name), trust_pickle=trust_pickle)
        print(f"robustify: zoo model {name}: {done} ({folder})")
def _doctor_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor", formatter_class=_Formatter, help="what this machine offers a long run: GPUs, disk, Hub, access",
        description="Check this machine before a long run: torch/CUDA/cuDNN/NCCL versions, GPUs and bf16, the "
                    "processes 'accelerate launch' would start, free disk at the output and cache folders, whether "
                    "the Hub answers (through the proxy huggingface_hub would use) and whether a gated data set is "
                    "open to the current token (never printed). Reads only. Exit 0: nothing blocks a run (an "
                    "unreachable Hub is a warning: the quickstart runs offline); 1: a 'fail' row says what does.",
    )
    p.add_argument("--output-dir", default=".", metavar="DIR", help="where the run will write")
    p.add_argument("--gated-dataset", default=None, metavar="ORG/NAME",
                   help="the gated data set to check access to; named here, a closed one is a 'fail' (default: "
                        "ILSVRC/imagenet-1k, a 'warn' when closed; '' to skip)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    import json

    from . import doctor

    gated = doctor.GATED_DEFAULT if args.gated_dataset is None else args.gated_dataset
    rows = doctor.diagnose(args.output_dir, gated, gated_required=args.gated_dataset is not None)
    print(json.dumps(doctor.as_json(rows), indent=2) if args.json else doctor.render(rows))
    return doctor.exit_code(rows)


# Each entry adds one subcommand's parser; the modules named in the handlers own the work.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _finetune_parser, _eval_parser, _push_parser, _pull_parser, _zoo_parser, _bench_parser, _recipes_parser,
    _import_parser, _export_parser,
    _doctor_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    from . import runlock

    runlock.current_command = " ".join(filter(None, [args.command, getattr(args, "zoo_command", None)]))
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
    except BrokenPipeError:  # 'robustify recipes | head': the reader has all it wanted
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    finally:
        if "robustify.runlock" in sys.modules:  # the command is over: its run folder is free again
            sys.modules["robustify.runlock"].release_all()


if __name__ == "__main__":
    sys.exit(main())
