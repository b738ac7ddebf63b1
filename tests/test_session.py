"""The session API: streaming, several objects, objects that start later, corrections, flat memory."""

import numpy as np
import pytest
import torch

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
    model = LLBNet(get_config("lite", "llb"))
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
        assert r.gates is not None and r.gates[1].shape == (2, 4, 7)
        assert ((r.gates[1] > 0) & (r.gates[1] < 1)).all()


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
    model = LLBNet(get_config("lite", "joint"))
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
