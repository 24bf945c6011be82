"""The node-local shard cache: each node downloads the Hub shards its processes read, once per run, and every epoch
reads them from local disk.

Owned here: where a shard lives on disk, the free-space check before anything is downloaded, and a full disk while
downloading (one line naming the file, the partial download removed). Not owned: which shards a node needs (the
pinned node groups of :mod:`robustify.data.shards`) and reading them (:class:`robustify.data.stream.ShardStore`).

Downloads go through ``huggingface_hub.hf_hub_download`` into the HF hub cache (or ``data.cache_dir``): resumable
(an interrupted download continues from its ``.incomplete`` file), content-addressed and shared with every other HF
tool on the machine, and safe when the processes of a node ask for the same shard at once (the client's file lock).
Shards are downloaded lazily, when a process first opens them (the next window downloads in the background while the
current one trains), so the first epoch overlaps the download with training; later epochs read only from disk.

Must not: download a shard twice per node, or leave a partial file in the cache.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError


def _resolved(url: str) -> Any:
    from huggingface_hub import HfFileSystem

    return HfFileSystem().resolve_path(url)


def _cached(url: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    r = _resolved(url)
    got = try_to_load_from_cache(r.repo_id, r.path_in_repo, cache_dir=cache_dir, revision=r.revision,
                                 repo_type=r.repo_type)
    return got if isinstance(got, str) else None


def hub_cache_dir(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def free_bytes(folder: Path) -> int:
    """Free space where ``folder`` is (or would be created)."""
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


class ShardCache:
    """The local copies of ``shards`` (a :class:`~robustify.data.stream.ShardSet`) that this node needs."""

    def __init__(self, shards: Any, needed: list[int], cache_dir: str | None = None) -> None:
        self.shards, self.needed, self.cache_dir = shards, sorted(set(needed)), cache_dir
        self.folder = hub_cache_dir(cache_dir)
        missing = [i for i in self.needed if _cached(shards.files[i], cache_dir) is None]
        self.to_download = sum(shards.nbytes[i] for i in missing)
        free = free_bytes(self.folder)
        if self.to_download > free:
            raise UserError(f"the node-local shard cache needs {self.to_download / 1e9:.2f} GB for {len(missing)} "
                            f"shard(s) of {shards.spec!r} but {str(self.folder)!r} has {free / 1e9:.2f} GB free; free "
                            "space, set data.cache_dir to a larger disk, or stream without a copy "
                            "(data.shard_cache=off)")

    def local_path(self, i: int) -> str:
        """Shard ``i`` on local disk, downloading it first (once) when it is not cached yet."""
        from huggingface_hub import hf_hub_download

        url = self.shards.files[i]
        got = _cached(url, self.cache_dir)
        if got is not None:
            return got
        r = _resolved(url)
        try:
            return hf_hub_download(r.repo_id, r.path_in_repo, repo_type=r.repo_type, revision=r.revision,
                                   cache_dir=self.cache_dir)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            self._remove_partial(r.repo_type, r.repo_id)
            raise UserError(f"the disk filled up while caching shard {Path(r.path_in_repo).name!r} in "
                            f"{str(self.folder)!r} ({e.strerror}); the partial file was removed; free space, set "
                            "data.cache_dir to a larger disk, or set data.shard_cache=off") from None

    def _remove_partial(self, repo_type: str, repo_id: str) -> None:
        folder = self.folder / f"{repo_type}s--{repo_id.replace('/', '--')}" / "blobs"
        for f in folder.glob("*.incomplete"):
            f.unlink(missing_ok=True)


__all__ = ["ShardCache", "free_bytes", "hub_cache_dir"]
