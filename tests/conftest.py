"""Shared fixtures. Everything runs offline on CPU; the quickstart run is trained once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: each worker (and every process a test launches, which inherits this)
    # uses one thread, so the workers never oversubscribe the cores
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


# The slowest tests (each tens of seconds: several trainings or process groups), started first under pytest-xdist so
# that the suite does not end with one worker running a long test while the other waits. Measured durations:
# docs/development.md; a test that takes more than about 20 s belongs here (a name that no longer exists is ignored;
# a prefix names every test under it).
SLOW_FIRST = (
    "tests/test_local_sgd.py::test_local_sgd_resumes_exactly_at_an_epoch_end",
    "tests/test_unlabeled.py::test_unlabeled_data_raises_robust_accuracy_at_the_same_steps",
    "tests/test_extra_data.py::test_extra_labelled_data_raises_robust_accuracy_and_never_reaches_probe_or_evaluation",
    "tests/test_scale.py::test_two_nodes_killed_with_sigkill_resume_exactly",
    "tests/test_recipes.py::test_every_recipe_trains_a_few_steps",  # one group: 29 short trainings
    "tests/test_sign_compression.py::test_sign_compression_resumes_exactly_with_each_process_error_memory",
    "tests/test_corruptions.py::test_cifar10c_layout_from_the_local_hub_at_world_sizes_1_and_3",
    "tests/test_hub.py::test_second_push_replaces_the_card",
    "tests/test_distributed.py::test_rollback_and_best_model_come_from_memory_on_every_process",
    "tests/test_resume.py::test_kill_9_mid_epoch_then_resume_equals_uninterrupted",
    "tests/test_import.py::test_import_and_pull_from_the_hub",
    "tests/test_scale.py::test_eval_and_probe_reach_every_collective_with_any_share",
    "tests/test_data_scale.py::test_294_shards_streamed_over_http_at_world_3_4_8",
    "tests/test_sign_compression.py::test_quickstart_with_sign_compression_on_two_processes_stays_in_sync_and_robust",
    "tests/test_l1.py::test_pgd_l1_training_raises_l1_robust_accuracy",
    "tests/test_guard.py::test_collapse_rolls_back_and_the_export_stays_robust",
    "tests/test_data_scale.py::test_probe_is_held_out_of_every_process_at_world_1_3_4_8",
    "tests/test_distributed.py::test_two_process_run_keeps_ranks_in_sync",
    "tests/test_new_methods.py::test_fp16_comm_hook_is_registered_on_a_two_process_run",
    "tests/test_faults.py::test_every_command_works_or_refuses_in_one_line_and_never_reports_foreign_numbers",
    "tests/test_data_scale.py::test_node_local_cache_downloads_each_shard_once_per_node",
    "tests/test_data_scale.py::test_killed_streaming_run_resumes_mid_epoch_to_identical_weights",
    "tests/test_data.py::test_aliases_load_the_real_hub_ids_from_a_local_hub",
    "tests/test_hub_server.py::test_timm_round_trip",
    "tests/test_scale.py::test_nodes_without_a_common_checkpoint_are_refused_in_one_line",
    "tests/test_scale.py::test_sigterm_on_one_process_stops_all_within_seconds",
    "tests/test_local_sgd.py::test_params_differ_between_syncs_and_match_at_each_with_k_times_fewer_all_reduces",
    "tests/test_new_methods.py::test_n_fgsm_run_gets_robust_and_exports_the_weight_average",
    "tests/test_distributed.py::test_sharded_evaluation_equals_single_process",
    "tests/test_scale.py::test_batchnorm_buffers_are_compared_and_broadcast",
    "tests/test_sign_compression.py::test_sign_hook_votes_sends_a_quarter_of_fp32_and_resumes_exactly",
    "tests/test_zoo_add.py::test_zoo_add_checks_the_published_card",
    "tests/test_freeze.py::test_robust_backbone_transfers_its_robustness",
)
SHARED_RUNS = ("quickstart_run", "tiny_runs")  # the session fixtures below: each made by the first test to need it


def _groups_file(config: pytest.Config) -> Path:
    """Where the workers tell the controller which tests belong together (the controller's base temp folder, which
    holds every worker's own)."""
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xdist-groups.json"


def _group(item: pytest.Item) -> str | None:
    """The module of a test that uses a module- or class-scoped fixture: such tests go to one worker, so the fixture
    (a trained run, a Hub server, a data set) is made once, not once on each worker."""
    defs = getattr(item, "_fixtureinfo", None)
    scopes = {d[-1].scope for d in defs.name2fixturedefs.values() if d} if defs else set()
    return item.nodeid.split("::")[0] if scopes & {"module", "class"} else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist the workers' order is the order tests are handed out (``--no-loadscope-reorder``): first
    the first test that needs each shared run (one worker makes it while the other starts the slow tests, so neither
    waits on the other's lock), then the slowest tests (SLOW_FIRST), then the rest in file order; a group starts with
    its earliest member. The groups go to the controller's scheduler (pytest_xdist_make_scheduler) through a file."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # -n 0: file order, and each module's fixtures are made once anyway

    def rank(item: pytest.Item) -> int:
        return next((k for k, prefix in enumerate(SLOW_FIRST)
                     if item.nodeid == prefix or item.nodeid.startswith((prefix + "::", prefix + "["))),
                    len(SLOW_FIRST))

    group = {item.nodeid: g for item in items if (g := _group(item))}
    ranks = {item.nodeid: rank(item) for item in items}
    for k, name in enumerate(SHARED_RUNS):
        first = next((i for i in items if name in getattr(i, "fixturenames", ())), None)
        if first is not None:
            ranks[first.nodeid] = k - len(SHARED_RUNS)
    start: dict[str, int] = {}
    for item in items:
        if item.nodeid in group:
            start[group[item.nodeid]] = min(start.get(group[item.nodeid], ranks[item.nodeid]), ranks[item.nodeid])
    position = {item.nodeid: k for k, item in enumerate(items)}
    items.sort(key=lambda i: (start.get(group.get(i.nodeid, ""), ranks[i.nodeid]), position[i.nodeid]))
    import json
    import tempfile

    target = _groups_file(config)
    with tempfile.NamedTemporaryFile("w", dir=target.parent, suffix=".tmp", delete=False) as f:
        json.dump(group, f)
    os.replace(f.name, target)  # every worker writes the same; the controller reads a whole one


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup`` with the groups of pytest_collection_modifyitems (pytest-xdist 3.8 cannot rename test ids
    under pytest 9, so its own xdist_group marks would be silently ignored): each group is one unit of work."""
    if config.getvalue("dist") != "loadgroup":
        return None
    import json

    from xdist.scheduler import LoadGroupScheduling

    class Grouped(LoadGroupScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # read once the workers have collected (the first call is in schedule())
                path = _groups_file(config)
                self.groups = json.loads(path.read_text()) if path.is_file() else {}
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return Grouped(config, log)


def _shared(tmp_path_factory: pytest.TempPathFactory, name: str, make) -> Path:
    """A folder made once per test session, also under pytest-xdist: the workers share the session's base temp
    folder's parent, and the first to arrive makes the folder under a file lock while the others wait for it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder every worker's base temp folder lives in
    folder = root / f"shared-{name}"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not (folder / "done").exists():
            if folder.exists():
                import shutil

                shutil.rmtree(folder)  # a worker that died half-way
            folder.mkdir()
            make(folder)
            (folder / "done").write_text("")
    return folder


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a full ``robustify finetune`` quickstart (about 35 s on 2 cores), shared by all tests.

    Tests must not modify it; copy it first (``shutil.copytree``) when a test writes into a run folder.
    """
    from robustify.config import build_config
    from robustify.train.trainer import finetune

    def make(folder: Path) -> None:
        finetune(build_config("quickstart", [f"output_dir={folder / 'run'}"]))

    return _shared(tmp_path_factory, "quickstart", make) / "run"


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps one process-wide state; a test that trains in bf16 or with gradient accumulation must not
    leak those settings into the next test's Accelerator (the process group, PartialState, is kept)."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


TINY = ["data.max_train_examples=128", "train.epochs=2", "eval.n_examples=32", "eval.pgd_steps=1",
        "train.probe_size=32", "train.probe_steps=1", "data.batch_size=64", "train.log_every=1"]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two finished tiny quickstart runs (different seeds, so different weights and numbers; two checkpoints each),
    made once per test session for the integrity and fault tests. Copy them before changing anything."""
    from robustify.config import build_config
    from robustify.train.trainer import finetune

    def make(folder: Path) -> None:
        for seed in (0, 1):
            finetune(build_config("quickstart", TINY + [f"train.seed={seed}", f"output_dir={folder / f'run{seed}'}"]))

    folder = _shared(tmp_path_factory, "tiny", make)
    return folder / "run0", folder / "run1"
