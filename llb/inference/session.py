"""The public inference API: a `Segmenter` holds a network; `Segmenter.start(video)` opens a `Session`; masks
are added on any frame; `Session.propagate()` streams one `FrameResult` per frame, forwards from a frame or
(`reverse=True`) backwards to frame 0; objects can be removed. `Session.track(reference)` runs both directions
from a reference frame, or re-tracks from a corrected frame after it, giving each frame once (the app's run and
`llb segment` are this call).

The session owns time. Each direction of travel keeps its own tracking state, and a propagation resumes from
the state this session holds nearest before its start: where the last one in that direction ended, or, with
`history`, any frame it passed (the state before each frame is kept: a few references per frame, plus the
memory frames that were later dropped from the memory). So a correction on frame k re-tracks from k with the
memory built up to k, and frames before k are not touched.

Frames are decoded as they are needed and each result is handed out before the next frame is read, so memory
use does not grow with the video's length: only the memory bank (at most `memory.size` frames per object
group) is kept. Objects whose masks are given on the same frame form a group that is tracked as one batch
(one crop per object); groups run independently and their probabilities are merged by soft aggregation.

Per frame and group (the paper's online inference): crop a region `crop.scale` times each object's previous
box and resize it to `crop.size`; extract features; E2* from the fitted target model, E1* from the memory;
fuse, decode, paste back. After merging, each box follows its mask; on memory frames the frame joins the memory
with its merged mask and the target model takes `update_iters` more steps (`init_iters` from zero on the
first frame). When frames join or leave the memory its encoding is updated, not redone
(`IncrementalMemoryEncoder`): a change costs N frame pairs instead of N^2. That update runs on the memory frame
itself, and what the frames' cross-attention reads of the memory (its encoding and E1, as tokens in the dtype
that attention computes in) is kept until the memory next changes, as is tau in that dtype.

`Segmenter.start(video, timer=StageTimer(device))` records the wall and CPU time of every stage of every frame
(`llb bench` reports them); without a timer nothing is timed and nothing is synchronised.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import load_model
from ..network import FrameFeatures, LLBNet
from ..transduction import IncrementalMemoryEncoder, to_tokens
from ..video.io import VideoError, iter_frames, probe
from ..video.masks import object_ids
from .aggregate import soft_aggregate
from .crop import CropConfig, crop_channels_last, mask_box, paste, search_region, update_box
from .fit import channels_last_features, fit
from .fold import cast_weights, fold_batch_norms
from .int8 import DecoderInputs, calibration_clips, check_int8, quantize_decoder
from .memory import MemoryBank, MemoryConfig, MemoryEntry
from .timing import StageFn, StageTimer, untimed

VideoSource = str | Path | Iterable[np.ndarray]
FOLDED = ("backbone", "decoder", "label_generator")  # the parts whose batch norms inference folds
AUTOCAST = (*FOLDED, "learner_adapter", "transduction_adapter", "fusion")  # parts that only run under autocast
REVERSE_CHUNK = 16  # frames decoded at a time when a video file or folder is read backwards


@dataclass
class InferenceConfig:
    """The paper's online schedule; every number is a default, not a constant."""

    crop: CropConfig = field(default_factory=CropConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    init_iters: int = 20
    update_iters: int = 3
    autocast: bool = True  # bf16 autocast where the device computes bf16 natively (the learner stays float32)
    compile: bool = False  # torch.compile the backbone and, on CUDA, the decoder (the first frames compile)
    return_gates: bool = False  # AFM gates per object and channel, for display
    int8: bool = False  # lite on the CPU: an int8 decoder, calibrated at load on the shipped clips (`int8`)

    @classmethod
    def schedule(cls, name: str, **overrides: object) -> InferenceConfig:
        """`paper` (the paper's text, the default) or `official` (the released tracker: a sample every 3rd
        frame in the weighted memory). The official tracker re-encodes every stored masked crop at each update;
        the label generator is deterministic and stored crops never change, so reusing their encodings is the
        same computation."""
        if name == "paper":
            return cls(**overrides)
        if name == "official":
            return cls(memory=MemoryConfig(policy="weighted", interval=3), **overrides)
        raise ValueError(f"unknown schedule {name!r}: choose paper or official")


@dataclass
class FrameResult:
    """One propagated frame.

    frame: the RGB input (H, W, 3) uint8; labels: object ids (H, W) uint8; probs: merged probabilities of
    `object_ids` (K, H, W) float32; gates: per object, the transduction and induction gates per channel
    (2, D, h, w) float16 in crop coordinates (only with `return_gates` and an AFM network): 2 x 32 x 15 x 27 x 2
    bytes = 51.8 kB per frame and object at the app's CPU crop of 240x432 (stride 16), 200 kB at 480x832;
    `.mean(1)` gives the mean maps over channels (2, h, w).
    """

    index: int
    name: str
    frame: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    object_ids: list[int]
    gates: dict[int, np.ndarray] | None = None


@dataclass
class Tracking:
    """A `Session.track` run: iterating it tracks and yields each frame's result once; `total` is how many that
    will be (None where the video's length is unknown: a one-pass iterator)."""

    total: int | None
    stream: Callable[[], Iterator[FrameResult]]

    def __iter__(self) -> Iterator[FrameResult]:
        return self.stream()


@dataclass
class _Group:
    """Objects that started on the same frame, tracked as one batch."""

    ids: list[int]
    start: int
    memory: MemoryBank
    tau: Tensor
    center: Tensor  # (B, 2)
    size: Tensor  # (B, 2)
    encoder: IncrementalMemoryEncoder
    # the memory as each frame's cross-attention reads it, as of `keys_version` (`Session._read_memory`): its
    # encoding (B, N*h*w, key_dim) and E1 tokens (B, N*h*w, D), in the dtype that attention computes in
    keys: Tensor | None = None
    values: Tensor | None = None
    keys_version: int = -1
    tau_cast: tuple[Tensor, Tensor] | None = None  # (tau, tau in the dtype the frames compute in), per fit

    def copy(self) -> _Group:
        """This state, to keep or to resume from: the memory's lists are copied (its entries are shared, never
        changed) and its encoding kept; the incremental encoder starts afresh and re-encodes the memory when it
        next changes (equal up to float rounding)."""
        mem = self.memory
        memory = MemoryBank(mem.cfg, list(mem.entries), list(mem.weights), mem.version)
        return replace(self, memory=memory, encoder=IncrementalMemoryEncoder(self.encoder.transduction))

    def without(self, object_id: int, sliced: dict[int, MemoryEntry]) -> _Group:
        """This group less one object: every batch (B, ...) tensor loses its row; `sliced` caches the memory
        entries already cut (by id), since saved states share them."""
        keep = [k for k, i in enumerate(self.ids) if i != object_id]
        rows = torch.tensor(keep, device=self.center.device)

        def cut(e: MemoryEntry) -> MemoryEntry:
            if id(e) not in sliced:
                fields = (e.learner, e.transduction, e.e1, e.e2, e.weight)
                sliced[id(e)] = MemoryEntry(e.frame, *(t[rows] for t in fields))
            return sliced[id(e)]

        mem = self.memory
        memory = MemoryBank(mem.cfg, [cut(e) for e in mem.entries], list(mem.weights), mem.version + 1)
        encoder = IncrementalMemoryEncoder(self.encoder.transduction)
        ids = [self.ids[k] for k in keep]
        return _Group(ids, self.start, memory, self.tau[rows], self.center[rows], self.size[rows], encoder)


@dataclass
class _Track:
    """Tracking in one direction: the live groups and the frame they expect next (None: none, or stale after a
    new prompt behind it); with history, the groups as they were before each frame passed."""

    live: list[_Group] = field(default_factory=list)
    next: int | None = None
    saved: dict[int, list[_Group]] = field(default_factory=dict)


@dataclass
class _Step:
    """What a group computed on the current frame and may need for its memory update."""

    boxes: Tensor
    crops: Tensor
    feats: FrameFeatures
    probs: Tensor
    e1_star: Tensor
    e2_star: Tensor


class Segmenter:
    """A network on a device with its inference settings; opens sessions on videos.

    `model` is the network the Segmenter runs: its inference form (`inference_network`), with the batch norms
    of the backbone, the decoder and the label generator folded into their convolutions. By default that is
    a copy, taken when the Segmenter is built, so the caller's model (a model in training, say) keeps its
    batch norms, mode and device; build a new Segmenter after changing its weights. `copy=False` converts
    `model` itself, for a network nobody else holds (`from_pretrained`). Where `cfg.autocast` takes effect,
    the convolutions of the parts that run under autocast (`AUTOCAST`) keep their weights in bf16
    (`cast_weights`: the same outputs, without casting them at every call), so `cfg.autocast` is fixed once the
    Segmenter is built. So is `cfg.int8`: the decoder is replaced by an int8 copy of its float32 form, calibrated
    while this Segmenter tracks the shipped example clips (a few seconds; `llb.inference.int8`)."""

    def __init__(
        self,
        model: LLBNet,
        cfg: InferenceConfig | None = None,
        device: str | torch.device | None = None,
        *,
        copy: bool = True,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cfg = cfg or InferenceConfig()
        if self.cfg.int8:
            check_int8(self.device, model.cfg.name)
        self.model = inference_network(model, self.device, copy=copy)
        if self.cfg.int8:
            float32_decoder = deepcopy(self.model.decoder)
        if self.cfg.autocast and native_bf16(self.device):
            # the decoder's last conv is read in float32 outside autocast (`upsample2x_conv3x3`)
            skip = (self.model.decoder.project_conv2,)
            for name in AUTOCAST:
                cast_weights(getattr(self.model, name), torch.bfloat16, skip)
        if self.cfg.int8:
            self.model.decoder = quantize_decoder(float32_decoder, self._decoder_inputs())
        if self.cfg.compile:
            self.compile()

    def _decoder_inputs(self) -> list[DecoderInputs]:
        """What the decoder receives while this Segmenter tracks the int8 calibration clips (`int8`)."""
        captured: list[DecoderInputs] = []
        hook = self.model.decoder.register_forward_hook(lambda m, args, out: captured.append(args))
        try:
            with torch.inference_mode():
                for frames, mask in calibration_clips():
                    session = self.start(frames)
                    session.add_mask(0, mask)
                    for _ in session.propagate():
                        pass
        finally:
            hook.remove()
        return captured

    def compile(self) -> None:
        """torch.compile the backbone and (on CUDA) the decoder, in place (their state dict keys stay as they
        are); the first frames of each batch size then take a while to compile. On a 2-core CPU (bf16, 1
        thread, loaded) neither pays: the backbone took 39.4 CPU ms a frame compiled against 39.9 eager in
        `llb bench` (about 50 s to compile), the decoder 107-128 ms against 112-127 (3 minutes to compile), so
        on the CPU the decoder stays eager."""
        self.cfg.compile = True
        self.model.backbone.compile()
        if self.device.type != "cpu":
            self.model.decoder.compile()

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path | None = None,
        *,
        config: str | None = None,
        variant: str | None = None,
        device: str | None = None,
        allow_untrained: bool = False,
        inference: InferenceConfig | None = None,
    ) -> Segmenter:
        """Load a trained checkpoint (a path, or the default of `config`/`variant`) and wrap it."""
        model = load_model(checkpoint, config=config, variant=variant, device="cpu", allow_untrained=allow_untrained)
        return cls(model, inference, device, copy=False)

    @property
    def trained(self) -> bool:
        """False for a network without trained weights: its output must never be shown as a result."""
        return self.model.trained

    def start(self, video: VideoSource, timer: StageTimer | None = None, *, history: bool = False) -> Session:
        """A session on `video`; with `timer`, the wall time of every stage of every frame is recorded; with
        `history`, propagation can resume at any frame it passed (for corrections; memory grows with the video)."""
        return Session(self, video, timer, history=history)


class Session:
    """Tracking state for one video: prompts (masks per frame) and the object groups of each direction."""

    def __init__(
        self, segmenter: Segmenter, video: VideoSource, timer: StageTimer | None = None, *, history: bool = False
    ) -> None:
        self.segmenter = segmenter
        self.video = video
        self.timer = timer
        self.history = history
        self._stage: StageFn = timer.stage if timer else untimed
        self.info = probe(video) if isinstance(video, str | Path) else None
        self.prompts: dict[int, np.ndarray] = {}
        self._tracks = {False: _Track(), True: _Track()}  # by `reverse`
        self._reverse = False  # the direction of the latest propagation

    @property
    def object_ids(self) -> list[int]:
        return sorted({i for labels in self.prompts.values() for i in object_ids(labels)})

    @property
    def num_frames(self) -> int | None:
        """The video's length; None for a one-pass iterator of frames."""
        if self.info is not None:
            return self.info.num_frames
        return len(self.video) if isinstance(self.video, Sequence | np.ndarray) else None

    @property
    def groups(self) -> list[_Group]:
        """The object groups of the latest propagation's direction, as they stand."""
        return self._tracks[self._reverse].live

    def add_mask(self, frame_index: int, labels: np.ndarray) -> list[int]:
        """Give the objects' masks on a frame: labels (H, W) of object ids (0 = background).

        On the first prompted frame they start the tracking; on a later frame, new ids start new objects and
        known ids correct that object's mask, and that frame joins its memory. Returns the ids on the frame.
        """
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"a mask must be a 2-D array of object ids, got shape {labels.shape}")
        if self.info is not None:
            want = (self.info.height, self.info.width)
            if labels.shape != want:
                raise ValueError(
                    f"the mask is {labels.shape[1]}x{labels.shape[0]} but the video frames are "
                    f"{want[1]}x{want[0]}: draw or export the mask at the video's resolution"
                )
            if not 0 <= frame_index < self.info.num_frames:
                raise ValueError(f"frame {frame_index} is outside the video (0..{self.info.num_frames - 1})")
        ids = object_ids(labels)
        if not ids:
            raise ValueError(f"the mask of frame {frame_index} has no object pixel: draw or click the object first")
        self.prompts[frame_index] = labels.astype(np.uint8)
        self._forget_after(frame_index)
        return ids

    def set_prompts(self, prompts: dict[int, np.ndarray]) -> None:
        """Make the prompts `prompts` (frame -> labels), changing only what differs: objects no longer given are
        removed, and frames whose masks changed, appeared or went are given or cleared (see add_mask)."""
        ids = {i for labels in prompts.values() for i in object_ids(labels)}
        for gone in set(self.object_ids) - ids:
            self.remove_object(gone)
        for frame in set(self.prompts) - set(prompts):
            self.clear_prompts(frame)
        for frame, labels in prompts.items():
            if frame not in self.prompts or not np.array_equal(self.prompts[frame], labels):
                self.add_mask(frame, labels)

    def clear_prompts(self, frame_index: int) -> None:
        """Take back the masks given on a frame; tracking state that had passed it is dropped."""
        if self.prompts.pop(frame_index, None) is not None:
            self._forget_after(frame_index)

    def remove_object(self, object_id: int) -> None:
        """Stop tracking `object_id`: it leaves every prompt (a frame left without objects loses its prompt) and
        every kept state; the other objects keep the memory built so far."""
        if object_id not in self.object_ids:
            raise ValueError(f"there is no object {object_id} to remove; the objects are {self.object_ids}")
        for frame, labels in list(self.prompts.items()):
            kept = np.where(labels == object_id, 0, labels).astype(np.uint8)
            if object_ids(kept):
                self.prompts[frame] = kept
            else:
                del self.prompts[frame]
        sliced: dict[int, MemoryEntry] = {}

        def drop(groups: list[_Group]) -> list[_Group]:
            return [g.without(object_id, sliced) if object_id in g.ids else g for g in groups if g.ids != [object_id]]

        for track in self._tracks.values():
            track.live = drop(track.live)
            track.saved = {frame: drop(groups) for frame, groups in track.saved.items()}

    def _forget_after(self, frame_index: int) -> None:
        """A prompt on `frame_index` changed: states that passed it (in their direction) no longer hold."""
        for reverse, track in self._tracks.items():
            ahead = -1 if reverse else 1
            track.saved = {f: g for f, g in track.saved.items() if (f - frame_index) * ahead <= 0}
            if track.next is not None and (track.next - frame_index) * ahead > 0:
                track.live, track.next = [], None

    def _name(self, i: int) -> str:
        names = self.info.frame_names if self.info else ()
        return names[i] if i < len(names) else f"{i:05d}"

    def _frames(self, start: int, stop: int | None, reverse: bool) -> Iterator[tuple[int, str, np.ndarray]]:
        """(index, name, RGB) from `start` towards `stop` (exclusive): up, or with `reverse` down."""
        if reverse:
            return self._frames_down(start, -1 if stop is None else stop)
        if isinstance(self.video, str | Path):
            frames = iter_frames(self.video, start=start, stop=stop)
            return ((i, self._name(i), frame) for i, frame in enumerate(frames, start))
        frames = islice(self.video, start, stop)
        return ((i, f"{i:05d}", np.asarray(frame)) for i, frame in enumerate(frames, start))

    def _frames_down(self, start: int, stop: int) -> Iterator[tuple[int, str, np.ndarray]]:
        """Frames `start` down to `stop` (exclusive); a file or folder is decoded `REVERSE_CHUNK` frames at a
        time, so memory stays bounded."""
        if isinstance(self.video, str | Path):
            high = start + 1
            while high > stop + 1:
                first = max(stop + 1, high - REVERSE_CHUNK)
                chunk = list(iter_frames(self.video, start=first, stop=high))
                for i in range(first + len(chunk) - 1, first - 1, -1):
                    yield i, self._name(i), chunk[i - first]
                high = first
        elif isinstance(self.video, Sequence | np.ndarray):
            for i in range(min(start, len(self.video) - 1), stop, -1):
                yield i, f"{i:05d}", np.asarray(self.video[i])
        else:
            raise ValueError("tracking backwards needs a video path or a list of frames, not a one-pass iterator")

    def propagate(
        self, start: int | None = None, stop: int | None = None, reverse: bool = False
    ) -> Iterator[FrameResult]:
        """Stream results from `start` (default: the first prompted frame) up to `stop` (exclusive; default: the
        end of the video), or with `reverse` down to `stop` (default: through frame 0).

        Tracking resumes from the latest state this session holds at or before `start` in that direction (the
        frames between are tracked again, not yielded); without one it starts afresh from the masks on `start`.
        Masks on the frames passed join as corrections or new objects.
        """
        if not self.prompts:
            raise ValueError("add a mask first: propagation starts from a frame whose objects are given")
        start = min(self.prompts) if start is None else start
        track = self._tracks[reverse]
        ahead = -1 if reverse else 1
        resume, groups = self._resume(track, start, ahead)
        self._reverse = reverse
        frames = self._frames(resume, stop, reverse)
        try:
            while (item := self._next_frame(frames)) is not None:
                index, name, rgb = item
                if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                    raise VideoError(f"frame {index} is not an RGB uint8 image (shape {rgb.shape}, {rgb.dtype})")
                if self.history:
                    track.saved[index] = [g.copy() for g in groups]
                # per step, not across the yield: the mode is thread-local and a caller may resume the stream
                # on another thread (web servers do)
                with torch.inference_mode():
                    result = self._step(groups, index, name, rgb)
                track.live, track.next = groups, index + ahead
                if (index - start) * ahead >= 0:
                    yield result
        finally:
            if self.timer is not None:
                self.timer.end_frame()

    def track(self, reference: int, start: int | None = None, *, backward_first: bool = False) -> Tracking:
        """Track the objects from the masks on `reference` forwards to the end and backwards to frame 0 (forwards
        first, or with `backward_first` backwards first), yielding each frame once: the reference on the way
        forwards.

        With `start` (a corrected frame after the reference) only the frames from `start` on are tracked again
        and yielded: from the state this session holds between the reference and `start` (with `history`, the
        memory built up to `start`), or else from the reference, tracking the frames before `start` again
        without yielding them (they rebuild the memory).
        """
        start = reference if start is None else start
        if start < reference:
            raise ValueError(f"a re-track starts after the reference frame ({reference}), not at frame {start}")
        ways = [False] + ([True] if start == reference and reference > 0 else [])  # by `reverse`
        n = self.num_frames
        total = None if n is None else n - start + (reference if start == reference else 0)

        def stream() -> Iterator[FrameResult]:
            for reverse in ways[::-1] if backward_first else ways:
                if reverse:
                    for result in self.propagate(start=reference, reverse=True):
                        if result.index < reference:  # the reference came forwards
                            yield result
                    continue
                held = any(reference <= f <= start for f in self._states(self._tracks[False]))
                for result in self.propagate(start=start if held else reference, reverse=False):
                    if result.index >= start:  # the frames before only rebuild the memory
                        yield result

        return Tracking(total, stream)

    def _states(self, track: _Track) -> dict[int, list[_Group]]:
        """The states a propagation in `track`'s direction can resume from, by the frame they come before: the
        kept ones and the live one; a state without objects only on a frame with masks (a start)."""
        states = dict(track.saved)
        if track.next is not None:
            states[track.next] = track.live
        return {f: g for f, g in states.items() if g or f in self.prompts}

    def _resume(self, track: _Track, start: int, ahead: int) -> tuple[int, list[_Group]]:
        """The frame to track from and the groups to track with, for a propagation from `start`."""
        states = self._states(track)
        behind = [f for f in states if (start - f) * ahead >= 0]
        if behind:
            frame = max(behind, key=lambda f: f * ahead)
            live = frame == track.next
            return frame, track.live if live else [g.copy() for g in states[frame]]
        if start not in self.prompts:
            way = "backwards" if ahead < 0 else "forwards"
            raise ValueError(
                f"propagation {way} cannot start at frame {start}: it has no mask and this session has not "
                f"tracked {way} through it (masks are on frames {sorted(self.prompts)})"
            )
        track.saved.clear()
        return start, []

    def _next_frame(self, frames: Iterator[tuple[int, str, np.ndarray]]) -> tuple[int, str, np.ndarray] | None:
        """The next (index, name, frame), or None at the end; with a timer, each frame opens a new record."""
        if self.timer is None:
            return next(frames, None)
        self.timer.begin_frame()
        with self.timer.stage("decode"):
            item = next(frames, None)
        if item is None:
            self.timer.end_frame(discard=True)
        return item

    def _step(self, groups: list[_Group], index: int, name: str, rgb: np.ndarray) -> FrameResult:
        """One frame for `groups` (which it updates, and joins new objects to)."""
        seg = self.segmenter
        prompt = self.prompts.get(index)
        if prompt is not None and prompt.shape != rgb.shape[:2]:
            raise ValueError(f"the mask of frame {index} is {prompt.shape[::-1]} but the frame is {rgb.shape[1::-1]}")
        with self._stage("crop"):
            image = torch.from_numpy(rgb).to(seg.device)  # (H, W, 3) uint8: crops read only their pixels
        probs: dict[int, Tensor] = {}
        steps: list[_Step | None] = []
        gates: dict[int, np.ndarray] = {}
        for group in groups:
            step = self._track(group, image)
            steps.append(step)
            probs.update(zip(group.ids, step.probs, strict=True))
            if seg.cfg.return_gates and hasattr(seg.model.fusion, "gate_induction"):
                with self._stage("fusion"):
                    gates.update(self._gates(group, step))
        with self._stage("merge"):
            given = {}
            if prompt is not None:
                given = {i: torch.from_numpy(prompt == i).to(seg.device).float() for i in object_ids(prompt)}
                probs.update(given)
            ids = sorted(probs)
            merged = soft_aggregate(_stack([probs[i] for i in ids]))
            if given:  # the user's masks are the truth on their frame: their pixels belong to them alone
                drawn = torch.stack([given[i] for i in given]).amax(0) > 0
                merged[:, drawn] = 0
                for i, mask in given.items():
                    merged[1 + ids.index(i), mask > 0] = 1
            by_id = dict(zip(ids, merged[1:], strict=True))
        for group, step in zip(groups, steps, strict=True):
            corrected = any(i in given for i in group.ids)
            self._update(group, index, step, _stack([by_id[i] for i in group.ids]), corrected)
        known = {i for g in groups for i in g.ids}
        new = [i for i in given if i not in known]
        if new:
            groups.append(self._init(index, image, new, torch.stack([given[i] for i in new])))
        with self._stage("merge"):
            labels = _argmax0(merged, [0, *ids]).cpu().numpy()
            out_probs = merged[1:].float().cpu().numpy()
        return FrameResult(
            index=index,
            name=name,
            frame=rgb,
            labels=labels,
            probs=out_probs,
            object_ids=ids,
            gates=gates or None,
        )

    def _autocast(self) -> torch.autocast:
        dev = self.segmenter.device
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self._bf16())

    def _bf16(self) -> bool:
        """Whether the frames' network runs under bf16 autocast."""
        return self.segmenter.cfg.autocast and native_bf16(self.segmenter.device)

    def _features(self, image: Tensor, boxes: Tensor) -> tuple[Tensor, FrameFeatures]:
        """Crops of the frame (H, W, 3) uint8: (B, 3, h, w) normalised, and their features."""
        model = self.segmenter.model
        with self._stage("crop"):
            crops = model.normalize(crop_channels_last(image[None], boxes, self.segmenter.cfg.crop.size))
            crops = crops.contiguous(memory_format=torch.channels_last)  # the convolutions' fast layout
        with self._stage("backbone"), self._autocast():
            feats = model.extract(crops)
            feats.learner = feats.learner.contiguous()  # the learner's grouped convolutions prefer this layout
        return crops, feats

    def _fit(self, group: _Group, iters: int, tau: Tensor | None) -> Tensor:
        """Steepest descent on the group's memory, in float32; each entry keeps the new tau's output on it, so
        the next fit applies tau afresh only to the entries added since (`fit`)."""
        mem = group.memory
        entries = mem.entries
        with self._stage("learner"), torch.autocast(self.segmenter.device.type, enabled=False):
            tau, out = fit(
                self.segmenter.model.learner,
                channels_last_features(mem.stacked("learner")),
                mem.stacked("e2").float(),
                mem.stacked("weight").float(),
                iters,
                tau,
                [e.fitted for e in entries],
                mem.sample_weights(entries[0].learner),
            )
        for entry, fitted in zip(entries, out, strict=True):
            entry.fitted = fitted
        return tau

    def _remember(
        self, group: _Group, index: int, boxes: Tensor, crops: Tensor, feats: FrameFeatures, masks: Tensor
    ) -> None:
        """Encode the frame's crops under their masks (B, H, W, full frame) and add them to the group's memory."""
        with self._stage("crop"):
            index_b = torch.arange(len(boxes), device=boxes.device)
            mask_crops = crop_channels_last(masks[..., None], boxes, self.segmenter.cfg.crop.size, index_b)
        with self._stage("label_generator"), self._autocast():
            enc = self.segmenter.model.encode_label(crops, mask_crops.to(crops.dtype))
        group.memory.add(MemoryEntry(index, feats.learner, feats.transduction, enc.e1, enc.e2, enc.weight))

    def _init(self, index: int, image: Tensor, ids: list[int], masks: Tensor) -> _Group:
        """Start tracking `ids` from their masks (B, H, W) on this frame (H, W, 3) uint8: memory and tau0."""
        cfg = self.segmenter.cfg
        center, size = mask_box(masks)
        encoder = IncrementalMemoryEncoder(self.segmenter.model.transduction)
        group = _Group(ids, index, MemoryBank(cfg.memory), masks.new_zeros(0), center, size, encoder)
        boxes = search_region(center, size, masks.shape[-2:], cfg.crop)
        crops, feats = self._features(image, boxes)
        self._remember(group, index, boxes, crops, feats, masks)
        group.tau = self._fit(group, cfg.init_iters, None)
        return group

    def _track(self, group: _Group, image: Tensor) -> _Step:
        """Segment the current frame (H, W, 3) uint8 for a group: per-object probabilities (B, H, W) on it."""
        model, cfg = self.segmenter.model, self.segmenter.cfg
        boxes = search_region(group.center, group.size, image.shape[:2], cfg.crop)
        crops, feats = self._features(image, boxes)
        keys, values = self._read_memory(group)
        if group.tau_cast is None or group.tau_cast[0] is not group.tau:
            group.tau_cast = (group.tau, group.tau.to(feats.learner.dtype))
        with self._autocast():
            out = model.segment(feats, group.tau_cast[1], keys, values, cfg.crop.size, self._stage)
        with self._stage("paste"):
            logits = paste(out.logits.float(), boxes, image.shape[:2])[:, 0]
            probs = torch.sigmoid(logits)
        return _Step(boxes, crops, feats, probs, out.e1_star, out.e2_star)

    def _read_memory(self, group: _Group) -> tuple[Tensor, Tensor]:
        """The group's memory as the cross-attention of its frames reads it: the memory's encoding (B, N*h*w,
        key_dim) and its E1 as tokens (B, N*h*w, D), both in the dtype that attention computes in (bf16 under
        autocast, which would otherwise cast the float32 encoding and re-tokenise E1 at every frame: the same
        values, once per memory change). On the CPU the encoding is stored transposed (strides of keys^T
        contiguous), the layout the scores' matrix product reads, which it would otherwise copy at every frame.
        Brought up to date when the memory has changed since."""
        keys, values = group.keys, group.values
        if keys is None or values is None or group.keys_version != group.memory.version:
            with self._stage("transduction"):
                keys = group.encoder.update([e.transduction for e in group.memory.entries])
                values = to_tokens(group.memory.stacked("e1"))
                if self._bf16():
                    keys, values = keys.to(torch.bfloat16), values.to(torch.bfloat16)
                if keys.device.type == "cpu":  # stored transposed: the scores' product reads keys^T, uncopied
                    keys = keys.mT.contiguous().mT
            group.keys, group.values, group.keys_version = keys, values, group.memory.version
        return keys, values

    def _gates(self, group: _Group, step: _Step) -> dict[int, np.ndarray]:
        """The group's AFM gates, per object (2, D, h, w) float16: the display needs each channel (what the
        gates learned differs far more between channels than between pixels) and float16 halves the memory."""
        with self._autocast():
            g1, g2 = self.segmenter.model.fusion.gates(step.e1_star, step.e2_star)
        maps = torch.stack([g1, g2], dim=1).half().cpu().numpy()
        return dict(zip(group.ids, maps, strict=True))

    def _update(self, group: _Group, index: int, step: _Step, merged: Tensor, corrected: bool) -> None:
        """After merging: move the boxes, and on memory frames (or corrections) grow the memory and refit."""
        cfg = self.segmenter.cfg
        if corrected or group.memory.due(abs(index - group.start)):
            self._remember(group, index, step.boxes, step.crops, step.feats, merged)
            group.tau = self._fit(group, cfg.update_iters, group.tau)
            self._read_memory(group)  # the memory's new encoding, on this frame rather than the next
        with self._stage("merge"):
            group.center, group.size = update_box(merged, group.center, group.size, cfg.crop)


def inference_network(model: LLBNet, device: torch.device, *, copy: bool = True) -> LLBNet:
    """`model` (a copy of it unless `copy=False`) in eval mode on `device`, with every conv + batch norm pair
    of its backbone, decoder and label generator folded into one convolution (`fold_batch_norms`): the same
    function up to float rounding, without the batch norms' passes over the feature maps."""
    net = deepcopy(model) if copy else model
    net.eval().to(device)
    for name in FOLDED:
        fold_batch_norms(getattr(net, name))
    return net


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when there is a GPU, else the CPU), `cpu` or `cuda[:N]`; asking for CUDA without a GPU is a
    ValueError that says what to pass instead."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 in hardware: CUDA GPUs from Ampere on, CPUs with AMX or AVX512-BF16
    (where oneDNN runs bf16 convolutions about twice as fast as float32; elsewhere it emulates them, slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _stack(maps: list[Tensor]) -> Tensor:
    """Maps of the same shape (H, W) as one (K, H, W) tensor, for reading only: a view of the map when there is
    one (a frame-sized copy saved, twice a frame, for a single object), else a stacked copy."""
    return maps[0][None] if len(maps) == 1 else torch.stack(maps)


def _argmax0(x: Tensor, values: Sequence[int] | None = None) -> Tensor:
    """`x.argmax(0)` as uint8 for (K + 1, H, W) with K < 255, by a running maximum: the first index of the
    maximum, like argmax, in a fraction of its time (torch reduces a leading dimension slowly). With `values`
    (K + 1 numbers below 256), values[argmax] directly."""
    values = range(len(x)) if values is None else values
    best, index = x[0], torch.full(x.shape[1:], values[0], dtype=torch.uint8, device=x.device)
    for k in range(1, len(x)):
        index.masked_fill_(x[k] > best, values[k])
        if k + 1 < len(x):
            best = torch.maximum(best, x[k])
    return index
