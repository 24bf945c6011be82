"""The renovation's rule (issue 26): a run option (train/options/) is named by no module of robustify/ but its own
file, the registry (options/__init__.py), the protocol (options/base.py), the config's schema (config.py) and the
other options' files (an option that refuses a pairing holds that rule, naming the other's key). A shared module
asks the registry instead (robustify/sections.py): the precisions the options implement, the words for the weights
they export, their cost clauses, the training data they add.

What counts as naming, in the code only (comments and docstrings may give an example): an option's switch key as
an attribute chain (``cfg.train.ema``) or inside a string (``"train.ema"``, ``f"train.ema={x}"``); the value that
switches it on when its switch is a shared key (``train.mixed_precision: pure-bf16``); and its record names (its
``name``, ``exported_as`` and cost fields) as a whole string (``.get("unlabeled")``, ``weights == "ema"``).
Cheap: a tokenizer pass over the package, no import of the modules it reads."""

from __future__ import annotations

import io
import re
import tokenize
from functools import cache
from pathlib import Path

import pytest

from robustify.config import FinetuneConfig
from robustify.train import options

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "robustify"
SHARED_ALLOWED = {"train/options/__init__.py", "train/options/base.py", "config.py"}
# modules that may name one option's names for another reason, each with it
ELSEWHERE = {
    "extra": {"data/extra.py": "the option's data reader, in the data wing (its file opens the sets through it)"},
    "ema": {"publish/converters/state_dict.py": "a foreign checkpoint's 'ema' entry, not the option"},
}
CODE_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
             tokenize.ENCODING, tokenize.ENDMARKER}


@cache
def _code(path: Path) -> tuple[str, tuple[str, ...]]:
    """(the module's code as one line of names and operators, the text of its string literals), comments and
    docstrings (a string that is a statement of its own) left out."""
    names: list[str] = []
    strings: list[str] = []
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
              if t.type not in (tokenize.NL, tokenize.COMMENT)]
    starts = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    for i, tok in enumerate(tokens):
        if tok.type in CODE_SKIP:
            continue
        if tok.type == tokenize.STRING:
            statement = (i == 0 or tokens[i - 1].type in starts) and (
                i + 1 == len(tokens) or tokens[i + 1].type in (tokenize.NEWLINE, tokenize.ENDMARKER))
            if not statement:  # a docstring (or a bare string statement) is documentation, not code
                strings.append(_literal(tok.string))
            names.append('""')
        elif tokenize.tok_name[tok.type] == "FSTRING_MIDDLE":  # Python >= 3.12 splits an f-string into tokens
            strings.append(tok.string)
        else:
            names.append(tok.string)
    return " ".join(names).replace(" . ", "."), tuple(strings)


def _literal(text: str) -> str:
    """A string token's text without its prefix and quotes (an f-string's braces stay, harmless here)."""
    body = text.lstrip("rbfuRBFU")
    quote = body[:3] if body[:3] in ('"""', "'''") else body[:1]
    return body[len(quote):-len(quote)]


def _names(unit: type[options.Option]) -> tuple[list[str], list[str]]:
    """(patterns searched in code and strings, strings that may not appear whole) for one option."""
    switch = next(iter(unit.keys))
    patterns = []
    if unit.precision:  # its switch is the shared train.mixed_precision: it is named by its value
        patterns.append(re.escape(unit.precision))
    else:
        patterns.append(r"(?<!\w)" + re.escape(switch) + r"(?!\w)")
    whole = [unit.name, *([unit.exported_as] if unit.exported_as else []), *unit.config_cost(FinetuneConfig())]
    return patterns, whole


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _naming(unit: type[options.Option]) -> list[str]:
    own = Path(__import__(unit.__module__, fromlist=["_"]).__file__).resolve()
    patterns, whole = _names(unit)
    found = []
    for path in _modules():
        rel = str(path.relative_to(PACKAGE))
        if path.resolve() == own or rel in SHARED_ALLOWED or rel in ELSEWHERE.get(unit.name, {}) or rel.startswith(
                "train/options/"):
            continue  # another option's file: a pairing it refuses names this option's key (the refuser holds it)
        code, texts = _code(path)
        for pattern in patterns:
            if re.search(pattern, code) or any(re.search(pattern, t) for t in texts):
                found.append(f"{rel}: {pattern}")
        found += [f"{rel}: {w!r}" for w in whole if w in texts]
    return found


@pytest.mark.parametrize("name", list(options.OPTIONS))
def test_an_option_is_named_only_by_its_own_file_the_registry_and_the_schema(name: str):
    assert _naming(options.OPTIONS[name]) == []


def test_the_scan_sees_code_and_strings_but_not_comments_or_docstrings(tmp_path: Path):
    """The scan itself can fail: a key in code or in a string is seen, in a comment or a docstring it is not."""
    sample = tmp_path / "sample.py"
    sample.write_text('"""Docstring: train.ema, pure-bf16."""\n\n\ndef f(cfg):\n    """Docstring: "ema"."""\n'
                      '    x = cfg.train.ema  # comment: train.ema\n    return f"{x} pure-bf16", "ema"\n')
    code, texts = _code(sample)
    assert re.search(r"(?<!\w)train\.ema(?!\w)", code)
    assert [t.replace("{x}", "") for t in texts] == [" pure-bf16", "ema"], texts
    assert "Docstring" not in code and "comment" not in code


def test_shared_modules_ask_the_registry_for_what_they_once_named():
    """The declarations the shared modules read: the config's precision choices and the CLI list the precision an
    option implements; the record names it; the card's words come from the options."""
    from robustify import sections
    from robustify.config import choices
    from robustify.publish.runrecord import precision_name

    declared = sections.declared("precision")
    assert declared and all(unit.precision == value and unit.precision_help and unit.precision_card
                            for value, unit in declared.items())
    assert choices()["train.mixed_precision"] == ("auto", "no", "bf16", *declared)
    assert all(precision_name(value, "fp32") == value for value in declared)
    assert precision_name("no") == "fp32" and precision_name("weird", "fp32") == "fp32"
    exported = [unit for unit in options.OPTIONS.values() if unit.exported_as]
    assert exported and all(unit.exported_text for unit in exported)
