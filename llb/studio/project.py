"""One person's work in the app: the clip, the objects with their names and colours, the edits (clicks,
brush strokes, uploaded masks) per frame, and the latest results. Each browser session has its own
Project, its own folder and its own click state, so two sessions never see each other's objects or files.

Disk stays bounded: a session keeps only the files it can still reach (its clip, its latest run and
comparison, the videos and zip the page shows); idle sessions are swept on a timer; each server keeps its
sessions in a folder it holds a lock on, so the next start deletes what a killed server left behind."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from llb.interactive import Click, ClickSegmenter
from llb.video.masks import MAX_OBJECTS, davis_palette, object_ids

from .clip import Clip
from .results import RunResult

log = logging.getLogger(__name__)
JOBS = {
    "load": "a video is still loading",
    "run": "a run is going",
    "compare": "the comparison is running",
}  # what the person is told when a second job of the session is asked for while one runs


@dataclass
class ObjectEdit:
    """An object's mask on one frame: `base` (uploaded, or the result being corrected), refined by clicks,
    then brush strokes added and erased on top."""

    base: np.ndarray | None = None
    clicks: list[Click] = field(default_factory=list)
    add: np.ndarray | None = None
    remove: np.ndarray | None = None
    mask: np.ndarray | None = None  # the computed mask, kept until the next edit


def colour(object_id: int) -> str:
    """The object's DAVIS palette colour as #rrggbb (the colour of its masks and overlays)."""
    r, g, b = davis_palette()[object_id]
    return f"#{r:02x}{g:02x}{b:02x}"


class Project:
    """State of one session; every method is called with the session's lock held by the app."""

    def __init__(self, root: Path, max_objects: int = MAX_OBJECTS) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="session-", dir=root))
        self.max_objects = min(max_objects, MAX_OBJECTS)
        self.touched = time.time()
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.job: str | None = None  # the load, run or comparison going now (one at a time)
        self.click_segmenter: ClickSegmenter | None = None  # this session's fork of the shared click segmenter
        self.outputs: dict[str, list[Path]] = {}  # files the page shows, by what made them ("run", "compare-llb")
        self.clip: Clip | None = None
        self.reference = 0
        self.active = 0  # the frame being viewed and edited: the reference, or a frame being corrected
        self.objects: dict[int, str] = {}
        self.current: int | None = None
        self.edits: dict[tuple[int, int], ObjectEdit] = {}  # (frame, object id) -> edit
        self.result: RunResult | None = None
        self.compare: dict[str, RunResult] = {}

    def close(self) -> None:
        """Delete the session's folder (on session end and when it expires)."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    @contextlib.contextmanager
    def busy(self, job: str) -> Iterator[None]:
        """Hold the session for `job` (a key of JOBS): a load, run or comparison asked for while another goes
        is refused with a message, so that a run never loses its clip to a new upload. When it ends, the files
        nothing reaches any more are deleted."""
        with self.lock:
            if self.job is not None:
                raise ValueError(f"{JOBS[self.job]} in this session: wait until it ends (or press Stop) and try again")
            self.job = job
        try:
            yield
        finally:
            with self.lock:
                self.job = None
                self.touched = time.time()
                self.prune()

    def keep_outputs(self, kind: str, paths: list[Path | None]) -> None:
        """The files the page now shows for `kind` ("run", "compare-llb", ...); earlier ones may be deleted."""
        self.outputs[kind] = [p for p in paths if p is not None]

    def prune(self) -> None:
        """Delete what the session can no longer reach: earlier clips, runs and rendered videos and zips."""
        keep = {p for paths in self.outputs.values() for p in paths}
        keep |= {r.folder for r in (self.result, *self.compare.values()) if r is not None}
        if self.clip is not None:
            keep.add(self.clip.folder.parent)
        outputs = self.workdir / "outputs"
        if not self.workdir.is_dir():
            return  # the session was closed while its job ran
        for path in [*(p for p in self.workdir.iterdir() if p != outputs), *outputs.glob("*")]:
            if path in keep:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def set_clip(self, clip: Clip) -> None:
        """A new clip: everything defined on the previous one is dropped (its files too, when no job runs)."""
        self.clip, self.reference, self.active = clip, 0, 0
        self.objects, self.current, self.edits = {}, None, {}
        self.result, self.compare, self.outputs = None, {}, {}

    def require_clip(self) -> Clip:
        if self.clip is None:
            raise ValueError("upload a video or pick an example first")
        return self.clip

    # objects
    def add_object(self, name: str | None = None) -> int:
        if len(self.objects) >= self.max_objects:
            raise ValueError(self._too_many(len(self.objects) + 1))
        free = [i for i in range(1, MAX_OBJECTS + 1) if i not in self.objects]
        new = free[0]
        self.objects[new] = (name or "").strip() or f"object {new}"
        self.current = new
        return new

    def _too_many(self, count: int) -> str:
        return (
            f"{count} objects: at most {self.max_objects} objects are tracked at once here (LLB_MAX_OBJECTS, "
            "each one costs a pass per frame); delete one, or track the others in a second run"
        )

    def select(self, object_id: int) -> None:
        if object_id not in self.objects:
            raise ValueError(f"there is no object {object_id}")
        self.current = object_id

    def rename(self, name: str) -> None:
        if self.current is None:
            raise ValueError("add an object first")
        if not name.strip():
            raise ValueError("an object's name cannot be empty")
        self.objects[self.current] = name.strip()

    def delete(self) -> None:
        """Remove the current object and all its edits; the next object (if any) becomes current."""
        if self.current is None:
            raise ValueError("there is no object to delete")
        gone = self.current
        del self.objects[gone]
        self.edits = {k: v for k, v in self.edits.items() if k[1] != gone}
        self.current = min(self.objects) if self.objects else None

    def choices(self) -> list[tuple[str, int]]:
        """(label, id) pairs for a dropdown."""
        return [(f"{i}: {name}", i) for i, name in sorted(self.objects.items())]

    # edits
    def _edit(self, frame: int) -> tuple[int, ObjectEdit]:
        """The current object's edit on `frame`, created (from the result there, if any) when missing."""
        self.require_clip()
        if self.current is None:
            self.add_object()
        key = (frame, self.current)
        if key not in self.edits:
            base = None
            if self.result is not None and frame != self.reference:
                labels = self.result.labels(frame)
                base = None if labels is None else labels == self.current
            self.edits[key] = ObjectEdit(base=base)
        return self.current, self.edits[key]

    def click(self, frame: int, x: int, y: int, positive: bool, click_segmenter: ClickSegmenter) -> None:
        clip = self.require_clip()
        if not (0 <= x < clip.width and 0 <= y < clip.height):
            raise ValueError(f"the click ({x}, {y}) is outside the {clip.width}x{clip.height} frame")
        if not positive and not self._has_object(frame):
            raise ValueError(
                "a background click removes pixels from an object, and there is none here yet: set "
                "“A click marks” to object and click the object first"
            )
        _, edit = self._edit(frame)
        edit.clicks.append(Click(int(x), int(y), bool(positive)))
        self._recompute(frame, edit, click_segmenter)

    def _has_object(self, frame: int) -> bool:
        """Whether the current object has pixels or a positive click on `frame` (what a background click edits)."""
        if self.current is None:
            return False
        if (edit := self.edits.get((frame, self.current))) is not None and any(c.positive for c in edit.clicks):
            return True
        return bool((self.labels(frame) == self.current).any())

    def undo_click(self, frame: int, click_segmenter: ClickSegmenter) -> None:
        _, edit = self._edit(frame)
        if edit.clicks:
            edit.clicks.pop()
        self._recompute(frame, edit, click_segmenter)

    def paint(self, frame: int, add: np.ndarray, remove: np.ndarray) -> None:
        """Brush strokes: `add` pixels join the current object, `remove` pixels leave it."""
        _, edit = self._edit(frame)
        edit.add = add if edit.add is None else edit.add | add
        edit.remove = remove if edit.remove is None else (edit.remove & ~add) | remove
        if edit.add is not None:
            edit.add &= ~remove
        edit.mask = self._combine(edit, edit.mask if edit.mask is not None else self._base(frame, edit))

    def set_labels(self, frame: int, labels: np.ndarray) -> list[int]:
        """An uploaded mask: each id becomes an object (created if new) with that mask as its base."""
        clip = self.require_clip()
        if labels.shape != (clip.height, clip.width):
            raise ValueError(
                f"the mask is {labels.shape[1]}x{labels.shape[0]} but the frames are {clip.width}x{clip.height}"
            )
        ids = object_ids(labels)
        if not ids:
            raise ValueError("the mask marks no object pixel")
        if len(set(self.objects) | set(ids)) > self.max_objects:
            raise ValueError(self._too_many(len(set(self.objects) | set(ids))))
        for i in ids:
            self.objects.setdefault(i, f"object {i}")
            self.edits[(frame, i)] = ObjectEdit(base=labels == i, mask=labels == i)
        self.current = ids[0]
        return ids

    def _base(self, frame: int, edit: ObjectEdit) -> np.ndarray:
        clip = self.require_clip()
        return edit.base if edit.base is not None else np.zeros((clip.height, clip.width), dtype=bool)

    @staticmethod
    def _combine(edit: ObjectEdit, mask: np.ndarray) -> np.ndarray:
        if edit.add is not None:
            mask = mask | edit.add
        if edit.remove is not None:
            mask = mask & ~edit.remove
        return mask

    def _recompute(self, frame: int, edit: ObjectEdit, click_segmenter: ClickSegmenter) -> None:
        """The current object's mask from its clicks: the prior is its mask there (the result being corrected),
        and the other objects' pixels are kept out (they are not handed over unless clicked)."""
        image = self.require_clip().frame(frame)
        if edit.clicks:
            others = self.labels(frame, skip=self.current) > 0
            mask = click_segmenter.segment(image, edit.clicks, edit.base, others)
        else:
            mask = self._base(frame, edit)
        edit.mask = self._combine(edit, mask)

    def clicks(self, frame: int) -> list[Click]:
        """The current object's clicks on `frame` (drawn on the view)."""
        edit = self.edits.get((frame, self.current)) if self.current is not None else None
        return list(edit.clicks) if edit else []

    def edited_frames(self) -> list[int]:
        return sorted({f for f, i in self.edits if i in self.objects})

    def labels(self, frame: int, skip: int | None = None) -> np.ndarray:
        """The label map shown and used as the prompt on `frame`: the result there (if any), with the edits
        on top (object ids in order, a later id winning where masks overlap); without object `skip`."""
        clip = self.require_clip()
        labels = None
        if self.result is not None and frame != self.reference:
            labels = self.result.labels(frame)
        if labels is None:
            labels = np.zeros((clip.height, clip.width), dtype=np.uint8)
        else:
            keep = [i for i in self.objects if i != skip]
            labels = np.where(np.isin(labels, keep), labels, 0).astype(np.uint8)
        for (f, i), edit in sorted(self.edits.items()):
            if f == frame and i in self.objects and i != skip and edit.mask is not None:
                labels[labels == i] = 0
                labels[edit.mask] = i
        return labels

    def prompts(self) -> dict[int, np.ndarray]:
        """Frames with edits and their label maps: the reference frame first, then corrections after it."""
        frames = [f for f in self.edited_frames() if f >= self.reference]
        prompts = {f: self.labels(f) for f in frames}
        return {f: labels for f, labels in prompts.items() if object_ids(labels)}


class Sessions:
    """Projects by browser session (Gradio's session hash); expired ones are closed and their files deleted.

    The projects' folders live in `root/app-*/`, one folder per server, locked (flock) while the server runs:
    a new Sessions deletes the folders whose lock is free (their server was killed). With `sweep_every_s`, a
    timer closes idle sessions (API clients send no heartbeat, so only their last use ends them)."""

    def __init__(
        self, root: Path, ttl_s: float, sweep_every_s: float | None = None, max_objects: int = MAX_OBJECTS
    ) -> None:
        self.ttl_s, self.max_objects = ttl_s, max_objects
        root.mkdir(parents=True, exist_ok=True)
        _sweep_dead_servers(root)
        self.root = Path(tempfile.mkdtemp(prefix="app-", dir=root))
        self._claim = _claim(self.root)
        self._projects: dict[str, Project] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        if sweep_every_s:
            threading.Thread(target=self._sweep_loop, args=(sweep_every_s,), name="llb-sweep", daemon=True).start()

    def get(self, key: str) -> Project:
        with self._lock:
            self._sweep()
            if key not in self._projects:
                self._projects[key] = Project(self.root, self.max_objects)
            project = self._projects[key]
            project.touched = time.time()
            return project

    def close(self, key: str) -> None:
        with self._lock:
            project = self._projects.pop(key, None)
        if project is not None:
            project.stop.set()
            project.close()

    def close_all(self) -> None:
        """Close every session and delete this server's folder (at exit)."""
        self._closed.set()
        for key in list(self._projects):
            self.close(key)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.with_suffix(".lock").unlink(missing_ok=True)

    def close_on_exit(self) -> None:
        """Delete the sessions' files when the process exits normally or on SIGTERM (a Space stopping);
        after kill -9 the next start sweeps them."""
        atexit.register(self.close_all)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: object) -> None:
            self.close_all()
            if callable(previous):
                previous(signum, frame)
            else:
                raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)

    def _sweep(self) -> None:
        """Close the sessions idle for longer than the TTL (never one whose job is still going)."""
        now = time.time()
        for key in [k for k, p in self._projects.items() if p.job is None and now - p.touched > self.ttl_s]:
            self._projects.pop(key).close()

    def _sweep_loop(self, every_s: float) -> None:
        while not self._closed.wait(every_s):
            with self._lock:
                self._sweep()


def _claim(folder: Path) -> IO:
    """Lock `folder` for this process's lifetime (the kernel frees the lock when the process dies)."""
    handle = open(folder.with_suffix(".lock"), "w")  # noqa: SIM115 (held open for the process's lifetime)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def _sweep_dead_servers(root: Path) -> None:
    """Delete the `app-*` folders under `root` whose server is gone (their lock is free), and session folders
    of the layout before servers had their own folder."""
    for old in root.glob("session-*"):
        shutil.rmtree(old, ignore_errors=True)
    for lock in root.glob("app-*.lock"):
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running server holds it
            shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
            lock.unlink(missing_ok=True)
            log.info("deleted the session files of a server that did not exit cleanly: %s", lock.stem)
