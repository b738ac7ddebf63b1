"""The click protocol and metric on hand-made masks, the click model's passes and checkpoints, the hand-made
fallback, the click trainer and `llb eval-clicks`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, require_shared
from PIL import Image

from llb.cli import main
from llb.evaluation.clicks import (
    FAIL_NOC,
    Sample,
    davis_first_frames,
    iou,
    next_click,
    noc,
    run_protocol,
    summarize,
)
from llb.interactive import Click, LocalZoneClickSegmenter
from llb.interactive.base import progressive_merge
from llb.interactive.click_checkpoint import load_click_model, read_click_checkpoint, save_click_checkpoint
from llb.interactive.click_model import ClickModel, ClickModelConfig, guidance_maps, salient_start
from llb.interactive.click_segmenter import ClickModelSegmenter, crop_mask, zoom_box
from llb.interactive.guided_filter import guided_filter, refine_mask
from llb.training.click_data import CachedImage, save_cached
from llb.training.clicks import ClickTrainConfig, ClickTrainer, first_clicks, to_view


def square(shape: tuple[int, int], y0: int, x0: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask


# ---- the protocol ---------------------------------------------------------------------------------------
def test_first_click_is_the_objects_centre() -> None:
    gt = square((40, 60), 10, 30, 11)  # rows 10..20, cols 30..40: centre (15, 35), 6 px from the boundary
    assert next_click(np.zeros_like(gt), gt) == Click(35, 15, True)


def test_image_edge_counts_as_boundary() -> None:
    gt = square((40, 40), 0, 0, 11)  # touches the top and left edges: without them the corner would win
    assert next_click(np.zeros_like(gt), gt) == Click(5, 5, True)


def test_larger_error_region_decides_the_sign() -> None:
    gt = square((60, 80), 5, 5, 21)
    pred = gt.copy()
    pred[13:18, 13:18] = False  # a 5x5 false negative hole: 3 px deep
    pred[30:51, 50:71] = True  # a 21x21 false positive: 11 px deep
    assert next_click(pred, gt) == Click(60, 40, False)
    pred[30:51, 50:71] = False
    pred[40:43, 60:63] = True  # now a 3x3 false positive: 2 px deep, the hole wins
    assert next_click(pred, gt) == Click(15, 15, True)


def test_clicked_pixels_are_not_clicked_again_and_no_error_gives_none() -> None:
    gt = square((40, 60), 10, 30, 11)
    assert next_click(gt, gt) is None
    second = next_click(np.zeros_like(gt), gt, clicked=[Click(35, 15, True)])
    assert second is not None and (second.x, second.y) != (35, 15) and gt[second.y, second.x]


def test_void_pixels_do_not_count() -> None:
    gt = square((40, 60), 10, 30, 11)
    valid = np.ones_like(gt)
    pred = gt.copy()
    pred[0:9, 0:9] = True  # a false positive on void only
    valid[0:9, 0:9] = False
    assert next_click(pred, gt, valid) is None
    assert iou(pred, gt, valid) == 1.0
    assert iou(pred, gt) == pytest.approx(121 / (121 + 81))


def test_noc_and_iou() -> None:
    assert noc([0.5, 0.86, 0.91], 0.85) == 2
    assert noc([0.5, 0.86, 0.91], 0.90) == 3
    assert noc([0.5, 0.86, 0.91], 0.95) == FAIL_NOC
    assert noc([0.95] * 12, 0.9, max_clicks=10) == 1
    assert iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert iou(square((10, 10), 0, 0, 4), square((10, 10), 0, 2, 4)) == pytest.approx(8 / 24)


class DiscMethod:
    """A toy method: the union of discs of radius 4 around the positive clicks, minus those of the negatives."""

    name = "discs"

    def segment(self, image: np.ndarray, clicks: Sequence[Click], prior: np.ndarray | None = None) -> np.ndarray:
        mask = np.zeros(image.shape[:2], np.uint8)
        for c in sorted(clicks, key=lambda c: c.positive):
            cv2.circle(mask, (c.x, c.y), 4, int(c.positive), -1)
        return mask > 0


class Oracle:
    name = "oracle"

    def __init__(self, gt: np.ndarray) -> None:
        self.gt = gt
        self.prepared = 0

    def prepare(self, image: np.ndarray) -> None:
        self.prepared += 1

    def segment(self, image: np.ndarray, clicks: Sequence[Click], prior: np.ndarray | None = None) -> np.ndarray:
        return self.gt


def test_protocol_on_toy_methods() -> None:
    gt = square((40, 60), 10, 30, 11)
    sample = Sample("square", np.zeros((40, 60, 3), np.uint8), gt, np.ones_like(gt))
    oracle = Oracle(gt)
    result = run_protocol(oracle, sample)
    assert oracle.prepared == 1
    assert result.ious == [1.0] * 10 and len(result.clicks) == 1
    discs = run_protocol(DiscMethod(), sample)
    assert discs.clicks[0] == Click(35, 15, True)
    assert all(gt[c.y, c.x] == c.positive for c in discs.clicks)  # positive on the object, negative off it
    assert discs.ious[0] == pytest.approx(49 / 121)  # a radius-4 disc (49 px) inside the 11x11 square
    assert discs.ious[-1] > discs.ious[0]
    summary = summarize([result, discs])
    assert summary["frames"] == 2
    assert summary["iou_at"]["1"] == pytest.approx((1 + 49 / 121) / 2, abs=1e-4)
    assert summary["noc90"] == (1 + noc(discs.ious, 0.9)) / 2
    assert summary["never90"] == int(noc(discs.ious, 0.9) == FAIL_NOC)


# ---- the model ------------------------------------------------------------------------------------------
def test_guidance_maps_mark_the_clicks() -> None:
    cfg = ClickModelConfig(side=64)
    maps = guidance_maps([(10, 20, True), (40, 5, False)], torch.zeros(32, 64), torch.ones(32, 64), cfg)
    assert maps.shape == (6, 32, 64)
    assert maps[0, 20, 10] == 1 and maps[0, 5, 40] == 0 and maps[1, 5, 40] == 1
    assert maps[2, 20, 10] == 1 and 0 < maps[2, 20, 14] < 1 and maps[3, 5, 40] == 1
    assert maps[4].sum() == 0 and maps[5].min() == 1


def test_salient_start_takes_the_regions_under_positive_clicks() -> None:
    saliency = np.zeros((40, 60), np.float32)
    saliency[5:15, 5:15] = 0.9
    saliency[20:30, 30:50] = 0.8
    start = salient_start(saliency, [(10, 10, True), (40, 25, False)])
    assert start.sum() == 100 and start[10, 10] and not start[25, 40]
    assert salient_start(saliency, [(0, 39, True)]).sum() == 0


def test_forward_and_backward() -> None:
    torch.manual_seed(0)
    model = ClickModel(ClickModelConfig(side=96), pretrained=False)
    image = torch.rand(1, 3, 64, 96) * 255
    feats = model.features(image)
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()}["layer1"] == (16, 24)
    guide = guidance_maps([(30, 20, True)], torch.zeros(64, 96), torch.rand(64, 96), model.cfg)[None]
    logits = model(feats, guide, image)
    assert logits.shape == (1, 1, 64, 96)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_checkpoint_round_trip_in_parts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ClickModel(ClickModelConfig(side=96), pretrained=False)
    files = save_click_checkpoint(model, tmp_path / "c.safetensors", info={"steps": 3}, max_shard_bytes=400_000)
    assert len(files) > 2 and files[-1].name == "c.safetensors.index.json"
    cfg, state, meta = read_click_checkpoint(tmp_path / "c.safetensors")
    assert cfg == model.cfg and json.loads(meta["info"]) == {"steps": 3}
    assert not any(k.startswith("backbone") for k in state)
    loaded = load_click_model(tmp_path / "c.safetensors")
    for k, v in model.head.state_dict().items():
        assert torch.equal(loaded.head.state_dict()[k], v.half().float() if v.is_floating_point() else v)


def test_progressive_merge_keeps_only_the_change_under_the_click() -> None:
    prev = square((60, 80), 10, 10, 20)
    new = square((60, 80), 10, 10, 20) | square((60, 80), 40, 50, 10)  # grows a part under the click ...
    new[10:15, 10:30] = False  # ... and loses a strip far from it
    merged = progressive_merge(prev, new, Click(55, 45, True))
    assert np.array_equal(merged, prev | square((60, 80), 40, 50, 10))
    negative = progressive_merge(prev, prev & ~square((60, 80), 10, 10, 5), Click(12, 12, False))
    assert np.array_equal(negative, prev & ~square((60, 80), 10, 10, 5))
    assert np.array_equal(progressive_merge(prev, new, Click(70, 5, False)), prev)  # its pixel did not change


@pytest.mark.parametrize("subsample", [1, 2])
def test_guided_filter_snaps_a_soft_boundary_to_the_image_edge(subsample: int) -> None:
    image = np.full((60, 80, 3), 30, np.uint8)
    image[:, 43:] = (220, 180, 40)  # the object: x >= 43
    logits = (np.arange(80, dtype=np.float32)[None].repeat(60, 0) - 40) / 3  # soft, and 3 px off the edge
    assert (logits > 0).sum() != (image[..., 0] > 100).sum()
    refined = refine_mask(image, logits, radius=0.1, subsample=subsample)
    assert np.array_equal(refined, image[..., 0] > 100)  # the fast filter too: its edge is the full image's
    flat = np.full((60, 80), 0.7, np.float32)
    assert np.allclose(guided_filter(image, flat, 4, subsample=subsample), 0.7, atol=1e-4)  # constant stays


def test_segmenter_replays_clicks_and_keeps_prefixes() -> None:
    torch.manual_seed(0)
    model = ClickModel(ClickModelConfig(side=64), pretrained=False)
    seg = ClickModelSegmenter(model, saliency=None)
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    clicks = [Click(20, 20, True), Click(60, 30, False)]
    assert not seg.segment(image, [Click(5, 5, False)]).any()
    mask = seg.segment(image, clicks)
    assert mask.shape == (48, 80) and mask.dtype == bool
    assert len(seg._history) == 2
    again = ClickModelSegmenter(model, saliency=None)
    again.segment(image, clicks[:1])
    assert np.array_equal(again.segment(image, clicks), mask)  # one at a time or all at once: the same


def test_shipped_click_model_segments_a_real_frame(data_dir: Path) -> None:
    if (
        not (REPO / "checkpoints" / "lite-clicks.safetensors").exists()
        and not (REPO / "checkpoints" / "lite-clicks.safetensors.index.json").exists()
    ):
        pytest.fail("checkpoints/lite-clicks.safetensors is not shipped")
    seg = ClickModelSegmenter.load()
    sample = next(s for s in davis_first_frames(data_dir / "davis2017-dev") if s.name == "blackswan")
    result = run_protocol(seg, sample, max_clicks=3)
    assert result.ious[0] > 0.7 and result.ious[2] > 0.85  # 0.93 and 0.94 when shipped


# ---- the fallback ---------------------------------------------------------------------------------------
def test_fallback_changes_only_the_local_zone() -> None:
    image = np.full((120, 160, 3), 40, np.uint8)
    image[30:90, 40:120] = (200, 60, 60)  # a red box on grey
    image[30:90, 100:120] = (60, 60, 200)  # its right end blue: salient with it, but not the object
    salient = np.zeros((120, 160), np.float32)
    salient[30:90, 40:120] = 1.0
    seg = LocalZoneClickSegmenter(lambda _: salient)
    first = seg.segment(image, [Click(70, 60, True)])
    assert np.array_equal(first, salient > 0.5)  # the salient region under the click
    second = seg.segment(image, [Click(70, 60, True), Click(110, 60, False)])
    assert not second[60, 110] and second[60, 70]
    assert not second[30:90, 100:120].any()  # the blue end is geodesically closer to the negative click
    assert np.array_equal(second[:, :95], first[:, :95])  # the rest of the mask stays


# ---- training -------------------------------------------------------------------------------------------
def test_first_clicks_lie_in_the_object() -> None:
    gt = square((60, 80), 10, 10, 30)
    rng = np.random.default_rng(0)
    for _ in range(20):
        clicks = first_clicks(gt, rng, extra=1.0)
        assert clicks[0].positive and gt[clicks[0].y, clicks[0].x]
        assert all(gt[c.y, c.x] == c.positive for c in clicks)


def test_trainer_steps_resumes_and_exports(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    labels = np.zeros((64, 96), np.uint8)
    labels[10:40, 20:60] = 1
    labels[45:60, 60:90] = 2
    cfg = ClickTrainConfig(steps=2, batch=2, out=str(tmp_path / "run"), val_every=0, save_every=1, error_weight=1.0)
    cfg.model = ClickModelConfig(side=96)
    model = ClickModel(cfg.model, pretrained=False)
    feats = model.features(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())
    item = CachedImage(rgb, np.zeros((64, 96), np.uint8), labels, {k: v[0].half().numpy() for k, v in feats.items()})
    save_cached(item, tmp_path / "a.npz")
    trainer = ClickTrainer(cfg, [tmp_path / "a.npz"])
    trainer.train_step()
    trainer.save_state(tmp_path / "run" / "last")
    stats = trainer.train_step()
    assert np.isfinite(stats["loss"]) and 0 <= stats["iou"] <= 1
    resumed = ClickTrainer(cfg, [tmp_path / "a.npz"])
    resumed.load_state(tmp_path / "run" / "last")
    assert resumed.step == 1
    again = resumed.train_step()
    assert again["loss"] == pytest.approx(stats["loss"], rel=1e-5)  # same data, same weights
    files = trainer.export(tmp_path / "lite-clicks.safetensors")
    assert all(f.stat().st_size <= 16 << 20 for f in files)
    assert read_click_checkpoint(tmp_path / "lite-clicks.safetensors")[2]["trained"] == "true"


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_saliency_dropout_hides_the_saliency_map_and_the_salient_start(
    dropout: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llb.training.clicks as training

    rgb = np.full((48, 64, 3), 128, np.uint8)
    labels = np.zeros((48, 64), np.uint8)
    labels[10:40, 10:50] = 1
    saliency = np.where(labels == 1, 255, 0).astype(np.uint8)
    cfg = ClickTrainConfig(max_iters=0, extra_clicks=0.0, saliency_dropout=dropout)
    cfg.model = ClickModelConfig(side=64)
    model = ClickModel(cfg.model, pretrained=False)
    feats = model.features(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())
    item = CachedImage(rgb, saliency, labels, {k: v[0].half().numpy() for k, v in feats.items()})
    seen: list[torch.Tensor] = []

    def spy(clicks: list, prev_mask: torch.Tensor, sal: torch.Tensor, model_cfg: ClickModelConfig) -> torch.Tensor:
        seen.append(torch.stack([prev_mask.float(), sal.float()]))
        return guidance_maps(clicks, prev_mask, sal, model_cfg)

    monkeypatch.setattr(training, "guidance_maps", spy)
    out = training.sample_loss(model, item, np.random.default_rng(0), cfg)
    assert out is not None and torch.isfinite(out[0])
    prev, sal = seen[-1]
    if dropout:
        assert not prev.any() and not sal.any()  # neither the map nor the salient region under the click
    else:
        assert prev.sum() == (labels == 1).sum() and sal.max() == 1  # the salient start is the object here


def test_zoom_box_and_click_mapping_follow_the_object() -> None:
    mask = square((240, 400), 100, 200, 40)
    clicks = [Click(220, 120, True), Click(205, 105, False)]
    assert zoom_box(mask, clicks[:1]) == (0, 0, 400, 240)  # the first click sees the whole frame
    x0, y0, x1, y1 = box = zoom_box(mask, clicks)
    assert (x0, y0) == (180, 80) and (x1 - x0, y1 - y0) == (80, 80)  # 40 px enlarged 1.4x, at least 0.2 x 400
    assert zoom_box(square((240, 400), 0, 0, 230), clicks) == (0, 0, 400, 240)  # too large: no zoom
    (c,) = to_view([Click(x0 + 40, y0 + 20, True)], box, (160, 160))
    assert (c.x, c.y) == (80, 40)  # 2x: the crop's pixel (40, 20) is the view's (80.5, 40.5) rounded down
    assert crop_mask(mask, box, (160, 160)).sum() == 80 * 80


def test_zoomed_sample_trains_the_head_on_the_crop(monkeypatch: pytest.MonkeyPatch) -> None:
    import llb.training.clicks as training

    rgb = np.full((96, 128, 3), 128, np.uint8)
    labels = np.zeros((96, 128), np.uint8)
    labels[40:56, 50:70] = 1
    rgb[labels == 1] = 230
    saliency = np.zeros((96, 128), np.uint8)
    saliency[36:60, 46:74] = 255  # a salient start larger than the object: the second click is negative
    cfg = ClickTrainConfig(max_iters=1, extra_clicks=0.0, zoom_share=1.0)
    cfg.model = ClickModelConfig(side=128)
    model = ClickModel(cfg.model, pretrained=False)
    feats = model.features(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())
    item = CachedImage(rgb, saliency, labels, {k: v[0].half().numpy() for k, v in feats.items()})
    shapes: list[tuple[int, ...]] = []

    def spy(clicks: list, prev_mask: torch.Tensor, sal: torch.Tensor, model_cfg: ClickModelConfig) -> torch.Tensor:
        shapes.append(tuple(prev_mask.shape))
        return guidance_maps(clicks, prev_mask, sal, model_cfg)

    monkeypatch.setattr(training, "guidance_maps", spy)
    for seed in range(20):  # the first seed that draws a corrective round
        shapes.clear()
        out = training.sample_loss(model, item, np.random.default_rng(seed), cfg)
        if len(shapes) > 1:
            break
    assert out is not None and torch.isfinite(out[0])
    out[0].backward()
    assert shapes[0] == (96, 128)  # the first click sees the whole image
    assert shapes[-1] != (96, 128) and max(shapes[-1]) == 128  # the loss is on a crop at the working size
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


# ---- the command ----------------------------------------------------------------------------------------
def test_eval_clicks_on_a_folder(tmp_path: Path) -> None:
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        image = rng.integers(0, 60, (60, 80, 3), dtype=np.uint8)
        mask = square((60, 80), 10 + 5 * i, 15, 30)
        image[mask] += 150
        Image.fromarray(image).save(images / f"f{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"f{i}.png")
    args = ["eval-clicks", "--images", str(images), "--masks", str(masks), "--out", str(out)]
    assert main([*args, "--methods", "grabcut", "--max-clicks", "3", "--quiet"]) == 0
    report = json.loads((out / "results.json").read_text())
    overall = report["methods"]["grabcut"]["overall"]
    assert overall["frames"] == 2 and set(overall["iou_at"]) == {"1", "3"}
    assert {"noc85", "noc90", "never90", "ms_per_click"} <= set(overall)
    assert (out / "iou_clicks.png").stat().st_size > 0 and (out / "results.md").is_file()


def test_eval_clicks_on_davis_first_frames(tmp_path: Path) -> None:
    root = require_shared("data", "davis2017-dev")
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval-clicks",
                "--davis-root",
                str(root),
                "--out",
                str(out),
                "--methods",
                "grabcut",
                "--max-clicks",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((out / "results.json").read_text())
    assert report["methods"]["grabcut"]["overall"]["frames"] == 4


def test_bench_clicks_times_every_click_on_480p_first_frames(tmp_path: Path) -> None:
    root = require_shared("data", "davis2017-dev")
    out = tmp_path / "clicks.json"
    args = ["bench-clicks", "--davis-root", str(root), "--methods", "grabcut", "--max-clicks", "2", "--threads", "1"]
    assert main([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    grabcut = report["grabcut"]
    assert grabcut["frames"] == 4 and 4 <= grabcut["clicks"] <= 8
    assert 0 < grabcut["ms_per_click_median"] <= grabcut["ms_per_click_p90"] <= grabcut["ms_per_click_max"]
    assert report["meta"]["frame_size"] == "854x480" and report["meta"]["threads"] == 1


def test_default_segmenter_is_the_model_with_the_fallback_when_its_weights_are_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import llb.checkpoint
    from llb.checkpoint import CheckpointError
    from llb.interactive import GrabCutClickSegmenter, default_click_segmenter

    monkeypatch.delenv("LLB_SAM_CHECKPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("LLB_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("LLB_CLICK_BACKEND", raising=False)
    assert isinstance(default_click_segmenter(), ClickModelSegmenter)  # the shipped checkpoints/lite-clicks
    monkeypatch.setattr(llb.checkpoint, "LOCAL_DIRS", ())
    assert isinstance(default_click_segmenter(), LocalZoneClickSegmenter)  # no weights: the hand-made fallback
    monkeypatch.setenv("LLB_CLICK_BACKEND", "model")
    with pytest.raises(CheckpointError):  # asked for by name: an error that says what is missing
        default_click_segmenter()
    monkeypatch.setenv("LLB_CLICK_BACKEND", "local-zone")
    assert isinstance(default_click_segmenter(), LocalZoneClickSegmenter)
    monkeypatch.setenv("LLB_CLICK_BACKEND", "grabcut")
    assert isinstance(default_click_segmenter(), GrabCutClickSegmenter)
    monkeypatch.setenv("LLB_CLICK_BACKEND", "sam2")
    with pytest.raises(ValueError, match="choose one of"):
        default_click_segmenter()
