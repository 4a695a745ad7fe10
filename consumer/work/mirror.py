"""A job's local work dir, mirrored to `<job prefix>/work/` in the state bucket.

Any instance can pick a job up: it restores the work dir from the state bucket before a slice and
syncs it back after. Both directions move only what changed, so a slice's overhead is the size of
what training wrote since the last sync (the new checkpoint), not the size of the work dir.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    from consumer.adapters.storage import ObjectInfo, ObjectStore

SYNC_THREADS = 8  # parallel uploads/downloads of work-dir files


class WorkdirMirror:
    """Keeps a local work dir and `<job prefix>/work/` equal, moving only what changed.

    `sync.json` beside the work dir remembers each file's (size, mtime) and the generation it was
    uploaded as, so a sync uploads only new or rewritten files and a restore downloads only files
    another instance changed. After `restore` the local dir equals the remote one exactly: files a
    crashed slice left behind without uploading are removed, so they cannot mix with newer state.
    """

    def __init__(self, store: ObjectStore, remote_prefix: str, local_dir: Path) -> None:
        self.store = store
        self.remote_prefix = remote_prefix.rstrip("/") + "/"
        self.local_dir = local_dir
        self.state_path = local_dir.parent / "sync.json"

    def restore(self) -> int:
        """Brings the local dir to the remote state; returns the number of files downloaded."""
        state = self._load_state()
        remote = {self._relative(info.uri): info for info in self.store.list(self.remote_prefix)}
        for rel in set(self._local_files()) - set(remote):
            (self.local_dir / rel).unlink()
            state.pop(rel, None)
        wanted = []
        for rel, info in remote.items():
            path = self.local_dir / rel
            known = state.get(rel)
            if known and known["generation"] == info.generation and _matches(path, known):
                continue
            wanted.append((rel, info))

        def fetch(item: tuple[str, ObjectInfo]) -> tuple[str, dict[str, int]]:
            rel, info = item
            path = self.local_dir / rel
            got = self.store.download_file(info.uri, path)
            return rel, _entry(path, got.generation)

        with ThreadPoolExecutor(SYNC_THREADS) as pool:
            state.update(dict(pool.map(fetch, wanted)))
        for rel in set(state) - set(remote):
            state.pop(rel)
        self._save_state(state)
        return len(wanted)

    def sync(self) -> int:
        """Uploads new and changed files, deletes remote files removed locally; returns files uploaded."""
        state = self._load_state()
        local = self._local_files()
        changed = [rel for rel in local if not (rel in state and _matches(self.local_dir / rel, state[rel]))]

        def push(rel: str) -> tuple[str, dict[str, int]]:
            path = self.local_dir / rel
            before = _entry(path, 0)
            generation = self.store.upload_file(path, self.remote_prefix + rel)
            return rel, {**before, "generation": generation}

        removed = sorted(set(state) - set(local))
        with ThreadPoolExecutor(SYNC_THREADS) as pool:
            state.update(dict(pool.map(push, changed)))
            list(pool.map(self.store.delete, [self.remote_prefix + rel for rel in removed]))
        for rel in removed:
            state.pop(rel)
        self._save_state(state)
        return len(changed)

    def delete_remote(self) -> int:
        """Removes the remote copy (a finished job's); returns the number of files removed. In parallel:
        a real dataset's work dir holds hundreds of files, each one request to delete."""
        uris = [info.uri for info in self.store.list(self.remote_prefix)]
        with ThreadPoolExecutor(SYNC_THREADS) as pool:
            list(pool.map(self.store.delete, uris))
        return len(uris)

    def _relative(self, uri: str) -> str:
        """An object's path under the remote prefix. `file://` URIs come back from a listing
        percent-encoded (`a%20b`) while the prefix may be written plainly (`a b`): compare both
        decoded, or a path with a space never matches and the work dir is never restored."""
        if uri.startswith(self.remote_prefix):
            return uri[len(self.remote_prefix) :]
        if uri.startswith("file://"):
            decoded, prefix = unquote(uri), unquote(self.remote_prefix)
            if decoded.startswith(prefix):
                return decoded[len(prefix) :]
        raise ValueError(f"{uri} is not under {self.remote_prefix}")

    def _local_files(self) -> list[str]:
        if not self.local_dir.exists():
            return []
        return sorted(
            p.relative_to(self.local_dir).as_posix()
            for p in self.local_dir.rglob("*")
            if p.is_file() and not _is_temporary(p)
        )

    def _load_state(self) -> dict[str, dict[str, int]]:
        if not self.state_path.exists():
            return {}
        return json.loads(self.state_path.read_text())

    def _save_state(self, state: dict[str, dict[str, int]]) -> None:
        from rvc_core.atomic import write_json

        write_json(self.state_path, state)


def _is_temporary(path: Path) -> bool:
    # rvc_core.atomic's temporaries (`.<name>.<random>.tmp`): a crash mid-write can leave one behind.
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _entry(path: Path, generation: int) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "generation": generation}


def _matches(path: Path, known: Mapping[str, int]) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return st.st_size == known["size"] and st.st_mtime_ns == known["mtime_ns"]
