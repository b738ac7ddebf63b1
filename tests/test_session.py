"""The session API: streaming, several objects, objects that start later, corrections, flat memory."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from llb.bench.measure import release_memory, rss_mb
from llb.config import get_config
from llb.inference.crop import CropConfig
from llb.inference.memory import MemoryConfig
from llb.inference.session import InferenceConfig, Segmenter
from llb.network import LLBNet

H, W = 96, 128


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    model = LLBNet(get_config("tiny", "llb"))  # random weights: these tests check the plumbing, not accuracy
    cfg = InferenceConfig(crop=CropConfig(size=(64, 112)), init_iters=5, update_iters=2, return_gates=True)
    return Segmenter(model, cfg, device="cpu")


def _frames(n, pulled=None):
    """A textured background with a bright square moving right; counts frames pulled."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 120, (H, W, 3), dtype=np.uint8)
    for t in range(n):
        if pulled is not None:
            pulled.append(t)
        frame = background.copy()
        x = 20 + (t % 60)
        frame[30:60, x : x + 30] = (250, 240, 30)
        yield frame


def _square_mask(obj=1, x=20):
    labels = np.zeros((H, W), np.uint8)
    labels[30:60, x : x + 30] = obj
    return labels


def test_propagate_streams_one_result_per_frame(segmenter):
    pulled = []
    session = segmenter.start(_frames(12, pulled))
    assert session.add_mask(0, _square_mask()) == [1]
    stream = session.propagate()
    first = next(stream)
    assert first.index == 0 and len(pulled) == 1  # a result before the next frame is read
    assert np.array_equal(first.labels, _square_mask())  # the given mask is the first frame's answer
    rest = list(stream)
    assert [r.index for r in rest] == list(range(1, 12))
    for r in rest:
        assert r.labels.shape == (H, W) and r.labels.dtype == np.uint8
        assert set(np.unique(r.labels)) <= {0, 1}
        assert r.probs.shape == (1, H, W) and r.probs.min() >= 0 and r.probs.max() <= 1
        assert r.gates is not None and r.gates[1].shape == (2, segmenter.model.cfg.label.dim, 4, 7)  # per channel
        assert r.gates[1].dtype == np.float16 and ((r.gates[1] > 0) & (r.gates[1] < 1)).all()


def test_objects_starting_later_and_corrections(segmenter):
    session = segmenter.start(list(_frames(8)))
    session.add_mask(0, _square_mask(1))
    late = np.zeros((H, W), np.uint8)
    late[70:90, 90:120] = 5
    session.add_mask(3, late)
    session.add_mask(6, _square_mask(1, x=26))  # a correction of object 1
    results = list(session.propagate())
    assert [r.object_ids for r in results[:3]] == [[1]] * 3
    assert all(r.object_ids == [1, 5] for r in results[3:])
    assert set(np.unique(results[3].labels)) <= {0, 1, 5}
    assert np.array_equal(results[6].labels == 1, _square_mask(1, x=26) == 1)
    groups = {tuple(g.ids): g for g in session.groups}
    assert groups[(1,)].memory.frames == [0, 5, 6]  # every 5th frame, plus the corrected one
    assert groups[(5,)].memory.frames == [3]
    assert session.object_ids == [1, 5]


def test_bad_masks_are_refused_with_a_reason(segmenter):
    session = segmenter.start(list(_frames(3)))
    with pytest.raises(ValueError, match="no object pixel"):
        session.add_mask(0, np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match="add a mask first"):
        next(session.propagate())
    session.add_mask(0, np.zeros((H + 1, W), np.uint8) + 1)
    with pytest.raises(ValueError, match="the frame is"):
        list(session.propagate())


def _rss_mb() -> tuple[float, float]:
    """Current and peak resident memory (MB) after freed memory goes back to the system, so that the current
    figure is live memory, not allocator slack left by earlier tests of the same process."""
    release_memory()
    return rss_mb()


@pytest.mark.slow
def test_memory_stays_flat_over_a_long_video():
    """100 vs 300 frames: the memory bank is bounded and nothing else accumulates."""
    torch.manual_seed(0)
    model = LLBNet(get_config("tiny", "joint"))
    cfg = InferenceConfig(
        crop=CropConfig(size=(64, 112)), init_iters=3, update_iters=1, memory=MemoryConfig(interval=2)
    )
    session = Segmenter(model, cfg, device="cpu").start(_frames(300))
    session.add_mask(0, _square_mask())
    seen = {}
    for r in session.propagate():
        if r.index in (99, 299):
            seen[r.index] = _rss_mb()
    assert len(session.groups[0].memory.entries) == 20
    (rss100, peak100), (rss300, peak300) = seen[99], seen[299]
    assert rss300 - rss100 < 25, seen
    assert peak300 - peak100 < 25, seen


def test_given_masks_own_their_pixels_on_their_frame(segmenter):
    """A new object drawn over a tracked one takes those pixels on its first frame."""
    session = segmenter.start(list(_frames(3)))
    session.add_mask(0, _square_mask(1))
    over = np.zeros((H, W), np.uint8)
    over[35:50, 25:40] = 2  # inside object 1's square
    session.add_mask(2, over)
    last = list(session.propagate())[-1]
    assert (last.labels[over == 2] == 2).all()
    assert np.allclose(last.probs[1][over == 2], 1) and np.allclose(last.probs[0][over == 2], 0)


def test_stream_resumes_on_other_threads(segmenter):
    """Web servers resume a streaming handler on any worker thread: every frame must still run, each on the
    thread that asked for it, and the result must not depend on which one."""
    from concurrent.futures import ThreadPoolExecutor

    def run(threaded: bool) -> list[np.ndarray]:
        session = segmenter.start(_frames(8))
        session.add_mask(0, _square_mask())
        stream = session.propagate()
        if not threaded:
            return [r.probs for r in stream]
        out = []
        with ThreadPoolExecutor(max_workers=1) as a, ThreadPoolExecutor(max_workers=1) as b:
            for i in range(8):
                out.append((a if i % 2 else b).submit(next, stream).result().probs)
        return out

    for threaded, plain in zip(run(True), run(False), strict=True):
        np.testing.assert_allclose(threaded, plain, atol=1e-6)


def _same(a, b) -> None:
    """Two streams of results are bit-identical."""
    assert [r.index for r in a] == [r.index for r in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.labels, y.labels) and np.array_equal(x.probs, y.probs)
        gx, gy = x.gates or {}, y.gates or {}  # none on a prompted frame
        assert gx.keys() == gy.keys() and all(np.array_equal(gx[k], gy[k]) for k in gx)


def test_backward_from_a_middle_frame_equals_tracking_the_reversed_clip(segmenter, tmp_path, monkeypatch):
    """Reverse propagation from frame 5 is what the app did before the session owned time: a second session
    on the frames 5, 4, .., 0 given the mask on its first frame. A folder is read backwards in chunks."""
    frames = list(_frames(9))
    mask = _square_mask(x=25)
    old = segmenter.start(frames[5::-1])
    old.add_mask(0, mask)
    expected = [replace(r, index=5 - r.index) for r in old.propagate()]

    session = segmenter.start(frames)
    session.add_mask(5, mask)
    forward = list(session.propagate(start=5))
    assert [r.index for r in forward] == [5, 6, 7, 8]
    _same(list(session.propagate(start=5, reverse=True)), expected)
    _same(list(session.propagate(start=5)), forward)  # the directions keep separate states

    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{i:05d}.png")
    monkeypatch.setattr("llb.inference.session.REVERSE_CHUNK", 2)
    from_folder = segmenter.start(tmp_path)
    from_folder.add_mask(5, mask)
    backward = list(from_folder.propagate(reverse=True))
    assert [r.name for r in backward] == [f"{i:05d}" for i in range(5, -1, -1)]
    _same(backward, expected)
    _same(list(from_folder.propagate(start=5, reverse=True, stop=2)), expected[:3])


def test_a_stopped_stream_resumes_where_it_ended(segmenter):
    session = segmenter.start(list(_frames(8)))
    session.add_mask(0, _square_mask())
    whole = list(session.propagate())
    first = list(session.propagate(stop=6))
    _same(first + list(session.propagate(start=6)), whole)
    with pytest.raises(ValueError, match="cannot start at frame 3"):
        next(session.propagate(start=3))  # passed, and without history only the end is kept


def test_a_correction_keeps_the_memory_built_so_far(segmenter, monkeypatch):
    """With history, a correction on frame 7 re-tracks from 7 with the memory built up to it: frames before are
    neither tracked again nor changed, and what follows is what one run with both masks gives."""
    frames = list(_frames(12))
    session = segmenter.start(frames, history=True)
    session.add_mask(0, _square_mask())
    first = list(session.propagate())
    fix = _square_mask(x=29)
    session.add_mask(7, fix)
    steps = []
    step = session._step
    monkeypatch.setattr(session, "_step", lambda *a: steps.append(a[1]) or step(*a))
    again = list(session.propagate(start=7))
    assert steps == [7, 8, 9, 10, 11] and [r.index for r in again] == steps
    assert np.array_equal(again[0].labels, fix)
    assert session.groups[0].memory.frames == [0, 5, 7, 10]

    once = segmenter.start(frames)
    once.add_mask(0, _square_mask())
    once.add_mask(7, fix)
    reference = list(once.propagate())
    _same(reference[:7], first[:7])
    # the memory is re-encoded afresh and the learner carries its A tau per entry (llb.inference.fit): float rounding
    for x, y in zip(again, reference[7:], strict=True):
        np.testing.assert_allclose(x.probs, y.probs, atol=5e-4)

    session.clear_prompts(7)
    for x, y in zip(session.propagate(start=7), first[7:], strict=True):
        np.testing.assert_allclose(x.probs, y.probs, atol=5e-4)
    session.add_mask(7, fix)
    session.clear_prompts(0)  # the track's start: nothing before 7 holds, so it starts afresh there
    assert np.array_equal(next(session.propagate()).labels, fix)


def test_remove_object_keeps_the_others_memory(segmenter):
    frames = list(_frames(8))
    labels = _square_mask(1)
    labels[70:90, 90:120] = 2
    session = segmenter.start(frames, history=True)
    session.add_mask(0, labels)
    first = list(session.propagate())
    assert first[-1].object_ids == [1, 2]
    session.remove_object(2)
    assert session.object_ids == [1] and 2 not in session.prompts[0]
    rest = list(session.propagate(start=4))
    assert all(r.object_ids == [1] and 2 not in r.labels for r in rest)
    group = session.groups[0]
    assert group.ids == [1] and group.center.shape == (1, 2) and group.memory.stacked("e1").shape[1] == 1
    with pytest.raises(ValueError, match="no object 2"):
        session.remove_object(2)


def test_track_gives_each_frame_once_both_ways_from_the_reference(segmenter):
    """`track` from a middle reference is what the app's engine did with two streams: forwards from the
    reference, then backwards without the reference again; `total` counts what it yields, and
    `backward_first` changes only the order."""
    frames = list(_frames(9))
    mask = _square_mask(x=24)
    old = segmenter.start(frames)
    old.add_mask(4, mask)
    expected = list(old.propagate(start=4)) + [r for r in old.propagate(start=4, reverse=True) if r.index != 4]

    session = segmenter.start(frames)
    session.add_mask(4, mask)
    run = session.track(4)
    results = list(run)
    assert [r.index for r in results] == [4, 5, 6, 7, 8, 3, 2, 1, 0] and run.total == 9
    _same(results, expected)
    other = segmenter.start(frames)
    other.add_mask(4, mask)
    _same(list(other.track(4, backward_first=True)), expected[5:] + expected[:5])


def test_track_from_a_correction_yields_only_the_frames_from_it(segmenter, monkeypatch):
    """A re-track from a corrected frame: the session of the first run resumes there (no frame is tracked
    again); a new session tracks from the reference again but yields only from the correction on, alike."""
    frames = list(_frames(10))
    first, fix = _square_mask(x=22), _square_mask(x=27)
    session = segmenter.start(frames, history=True)
    session.add_mask(2, first)
    assert [r.index for r in session.track(2)] == [*range(2, 10), 1, 0]
    session.add_mask(6, fix)
    steps = []
    step = session._step
    monkeypatch.setattr(session, "_step", lambda *a: steps.append(a[1]) or step(*a))
    run = session.track(2, start=6)
    resumed = list(run)
    assert steps == [6, 7, 8, 9] and [r.index for r in resumed] == steps and run.total == 4
    assert np.array_equal(resumed[0].labels, fix)

    fresh = segmenter.start(frames)
    fresh.set_prompts({2: first, 6: fix})
    replayed = list(fresh.track(2, start=6))
    assert [r.index for r in replayed] == [6, 7, 8, 9]
    for x, y in zip(resumed, replayed, strict=True):  # the memory re-encoded afresh: float rounding
        np.testing.assert_allclose(x.probs, y.probs, atol=5e-4)
    with pytest.raises(ValueError, match="after the reference frame"):
        session.track(2, start=1)
