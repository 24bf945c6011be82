"""Import the original projects (robustbench 1.1.1, MadryLab robustness 1.2.1) on today's torch/torchvision, for the
tests that check robustify's converters against them (tests/test_originals_*.py). Test-only: robustify never
imports either package.

Why shims are needed (each is the smallest stand-in that lets the package's own model code import):

- robustness 1.2.1 imports ``torchvision.models.utils.load_state_dict_from_url``; torchvision removed that module
  (the function lives in ``torch.hub``): an alias module is registered.
- robustness imports ``cox`` (its experiment logger: ``cox.store``, ``cox.utils.Parameters``) at import time, but the
  model, checkpoint and normalization code never calls it; cox drags in pytables and tensorboardX, so a stand-in
  module with those two names is registered unless the real cox is installed.
- robustbench 1.1.1 imports ``autoattack`` (its evaluation code); the registry package ``pyautoattack`` installs the
  same code under the name ``pyautoattack``: an alias is registered when ``autoattack`` itself is absent.

``robustbench()`` / ``robustness()`` return the imported package, or skip the calling test with the reason (which
package is missing and how to install the extra).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

import pytest

INSTALL = "install the test extra: pip install -e '.[test,originals]' && pip install --no-deps robustbench==1.1.1 " \
          "robustness==1.2.1 (make test does both)"
VERSIONS = {"robustbench": "1.1.1", "robustness": "1.2.1"}


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _require(name: str) -> None:
    have = _version(name)
    if have is None or importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} {VERSIONS[name]} is not installed; {INSTALL}")
    if have != VERSIONS[name]:
        pytest.skip(f"{name} {have} is installed, but the converters were checked against {VERSIONS[name]}; {INSTALL}")


def _alias_torchvision_utils() -> None:
    if "torchvision.models.utils" in sys.modules:
        return
    try:
        importlib.import_module("torchvision.models.utils")
    except ImportError:
        import torch.hub

        mod = types.ModuleType("torchvision.models.utils")
        mod.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
        sys.modules["torchvision.models.utils"] = mod


def _standin_cox() -> None:
    if importlib.util.find_spec("cox") is not None or "cox" in sys.modules:
        return

    class Parameters:
        """cox.utils.Parameters: an attribute view of a dict (what robustness' train.py reads its args through)."""

        def __init__(self, params: dict[str, Any]) -> None:
            self.__dict__["params"] = dict(params)

        def __getattr__(self, key: str) -> Any:
            try:
                return self.__dict__["params"][key.lower()]
            except KeyError:
                raise AttributeError(key) from None

        def __setattr__(self, key: str, value: Any) -> None:
            self.__dict__["params"][key.lower()] = value

    cox = types.ModuleType("cox")
    store = types.ModuleType("cox.store")
    store.PICKLE, store.OBJECT = "__pickle__", "__object__"  # type: ignore[attr-defined]
    utils = types.ModuleType("cox.utils")
    utils.Parameters = Parameters  # type: ignore[attr-defined]
    cox.store, cox.utils = store, utils  # type: ignore[attr-defined]
    sys.modules.update({"cox": cox, "cox.store": store, "cox.utils": utils})


def _alias_autoattack() -> None:
    if importlib.util.find_spec("autoattack") is not None or "autoattack" in sys.modules:
        return
    if importlib.util.find_spec("pyautoattack") is None:
        pytest.skip(f"robustbench needs autoattack (the registry package pyautoattack); {INSTALL}")
    for sub in ("", ".state", ".autoattack"):
        sys.modules["autoattack" + sub] = importlib.import_module("pyautoattack" + sub)


def robustness() -> types.ModuleType:
    """MadryLab's ``robustness`` package (its datasets, attacker, model_utils and train modules imported)."""
    _require("robustness")
    _alias_torchvision_utils()
    _standin_cox()
    pkg = importlib.import_module("robustness")
    for sub in ("datasets", "attacker", "model_utils", "train"):
        importlib.import_module(f"robustness.{sub}")
    return pkg


def robustbench() -> types.ModuleType:
    """The ``robustbench`` package (its utils.load_model and model_zoo imported)."""
    _require("robustbench")
    _alias_autoattack()
    import warnings

    with warnings.catch_warnings():  # robustbench imports timm's deprecated module paths: not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        pkg = importlib.import_module("robustbench")
        importlib.import_module("robustbench.utils")
        importlib.import_module("robustbench.model_zoo")
    return pkg
