"""Memory policy, search-region crop/paste and the decoder's x2 upsampling (and its fusion with the last conv)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from llb.config import DecoderConfig, InductionConfig
from llb.data import sampler
from llb.decoder import LEVELS, SegmentationDecoder, upsample, upsample2x, upsample2x_conv3x3
from llb.induction import FewShotLearner, LearnerMemory, apply_filter, filter_gradient
from llb.inference.aggregate import soft_aggregate
from llb.inference.crop import CropConfig, crop_channels_last, mask_box, paste, search_region, update_box
from llb.inference.fit import channels_last_features, fit, weight_gradient
from llb.inference.memory import MemoryBank, MemoryConfig, MemoryEntry
from llb.inference.session import _argmax0


def _entry(frame):
    t = torch.zeros(1, 1, 1, 1)
    return MemoryEntry(frame, t, t, t, t, t)


def _run(policy, interval, frames=200):
    bank = MemoryBank(MemoryConfig(policy=policy, interval=interval))
    bank.add(_entry(0))
    for t in range(1, frames):
        if bank.due(t):
            bank.add(_entry(t))
        assert len(bank.entries) <= 20
        assert bank.frames[0] == 0
    return bank


def test_paper_policy_keeps_first_frame_and_the_latest_every_fifth():
    bank = _run("paper", 5)
    assert bank.frames == [0, *range(105, 200, 5)]
    assert bank.sample_weights(torch.zeros(1)) is None


def test_weighted_policy_keeps_first_frame_weight_and_drops_the_lightest():
    bank = _run("weighted", 3)
    assert len(bank.entries) == 20
    assert abs(sum(bank.weights) - 1) < 1e-9
    assert bank.weights[0] >= 0.25 - 1e-9
    newest = bank.frames.index(max(bank.frames))
    assert bank.weights[newest] == max(bank.weights[1:])
    w = bank.sample_weights(torch.zeros(2, 3))
    assert w.shape == (20, 2)


def test_memory_version_changes_only_on_add():
    bank = MemoryBank(MemoryConfig())
    bank.add(_entry(0))
    v = bank.version
    assert not bank.due(3) and bank.version == v
    bank.add(_entry(5))
    assert bank.version == v + 1


def test_crop_then_paste_round_trips_inside_the_box():
    h, w = 60, 80
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    image = torch.stack([xx, yy, xx + yy])  # smooth, so bilinear resampling is nearly exact
    boxes = torch.tensor([[10.0, 5.0, 50.0, 45.0], [0.0, 0.0, 80.0, 60.0]])
    crops = crop_channels_last(image.permute(1, 2, 0)[None], boxes, (32, 48))
    back = paste(crops, boxes, (h, w), outside=-1.0)
    inner = back[0, :, 8:42, 12:48]
    torch.testing.assert_close(inner, image[:, 8:42, 12:48], atol=0.6, rtol=0)
    assert (back[0, :, :, :9] == -1).all() and (back[0, :, 46:] == -1).all()
    torch.testing.assert_close(back[1, :, 2:-2, 2:-2], image[:, 2:-2, 2:-2], atol=0.6, rtol=0)


# boxes inside the frame, across each edge, larger than it, and small (several samples or one per bin)
FRAME_BOXES = torch.tensor(
    [
        [200.3, 100.7, 640.2, 350.1],
        [-30.5, -20.2, 300.4, 200.9],
        [600.1, 300.2, 900.7, 520.3],
        [-5.0, -3.0, 900.0, 500.0],
        [0.0, 0.0, 854.0, 480.0],
        [100.2, 100.1, 150.3, 130.6],
        [853.0, 10.0, 870.0, 30.0],
    ]
)


def _frame(h: int = 480, w: int = 854) -> torch.Tensor:
    """A textured RGB frame (H, W, 3) uint8: noise over gradients, so every tap weight matters."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    base = torch.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], dim=-1)
    return ((base + torch.randint(0, 64, (h, w, 3), generator=gen)) % 256).to(torch.uint8)


def _crop_by_roi_align(images: Tensor, boxes: Tensor, size: tuple[int, int], index: Tensor | None = None) -> Tensor:
    """The reference crop: torchvision's roi_align (aligned, adaptive sampling) of float images (N, C, H, W)."""
    if index is None:
        index = boxes.new_zeros(len(boxes))
    rois = torch.cat([index[:, None].to(boxes), boxes], dim=1).to(images.dtype)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def test_crop_channels_last_is_roi_align_of_the_float_frame() -> None:
    frame = _frame()
    want = _crop_by_roi_align(frame.permute(2, 0, 1).float()[None], FRAME_BOXES, (60, 108))
    got = crop_channels_last(frame[None], FRAME_BOXES, (60, 108))
    assert got.shape == want.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3)  # of 0..255
    big = _crop_by_roi_align(frame.permute(2, 0, 1).float()[None], FRAME_BOXES[:1], (240, 432))
    torch.testing.assert_close(crop_channels_last(frame[None], FRAME_BOXES[:1], (240, 432)), big, rtol=0, atol=1e-3)


def test_crop_channels_last_reads_the_image_of_each_box() -> None:
    masks = (_frame()[..., :2].permute(2, 0, 1) > 128).float()  # two (H, W) masks
    index = torch.tensor([1, 0])
    want = _crop_by_roi_align(masks[:, None], FRAME_BOXES[:2], (60, 108), index)
    got = crop_channels_last(masks[..., None], FRAME_BOXES[:2], (60, 108), index)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def _paste_by_grid_sample(crops: torch.Tensor, boxes: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """The reference paste-back: one grid_sample over the whole frame, -100 outside the boxes."""
    img_h, img_w = image_hw
    xs, ys = torch.arange(img_w) + 0.5, torch.arange(img_h) + 0.5
    gx = 2 * (xs[None] - boxes[:, 0:1]) / (boxes[:, 2:3] - boxes[:, 0:1]) - 1
    gy = 2 * (ys[None] - boxes[:, 1:2]) / (boxes[:, 3:4] - boxes[:, 1:2]) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    out = F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where((grid.abs() <= 1).all(dim=-1)[:, None], out, torch.full_like(out, -100.0))


def test_paste_is_grid_sample_on_the_boxes() -> None:
    crops = torch.randn(len(FRAME_BOXES), 2, 60, 108, generator=torch.Generator().manual_seed(1)) * 10
    got = paste(crops, FRAME_BOXES, (480, 854))
    want = _paste_by_grid_sample(crops, FRAME_BOXES, (480, 854))
    assert ((got == -100) == (want == -100)).all()
    # sample positions agree to float rounding (~1e-5 px); neighbouring noise values differ by up to ~70
    torch.testing.assert_close(got, want, rtol=0, atol=5e-4)


def test_crop_reads_zero_outside_the_image():
    image = torch.ones(1, 20, 20, 1)
    out = crop_channels_last(image, torch.tensor([[-20.0, 0.0, 20.0, 20.0]]), (10, 20))
    assert out[0, 0, :, :8].max() < 0.2 and out[0, 0, :, 12:].min() > 0.8


def test_mask_box_and_search_region():
    masks = torch.zeros(1, 100, 200)
    masks[0, 40:60, 90:130] = 1
    center, size = mask_box(masks)
    torch.testing.assert_close(center, torch.tensor([[110.0, 50.0]]))
    # a uniform box of width L has std L / sqrt(12): 4 std = 40 * 4 / sqrt(12)
    torch.testing.assert_close(size, torch.tensor([[40 * 4 / 12**0.5, 20 * 4 / 12**0.5]]), atol=0.05, rtol=0)
    cfg = CropConfig(size=(48, 96), scale=2.0)
    box = search_region(center, size, (100, 200), cfg)[0]
    bw, bh = box[2] - box[0], box[3] - box[1]
    torch.testing.assert_close(bw / bh, torch.tensor(2.0))
    torch.testing.assert_close(bw * bh, size.prod() * 4)
    big = search_region(center, size * 20, (100, 200), cfg)[0]
    assert big[0] >= -1e-4 and big[2] <= 200 + 1e-4  # never larger than the image in both dimensions


def test_update_box_limits_scale_change_and_keeps_box_for_tiny_masks():
    cfg = CropConfig()
    prev_c, prev_s = torch.tensor([[50.0, 50.0]]), torch.tensor([[40.0, 40.0]])
    big = torch.zeros(1, 100, 100)
    big[0, 10:90, 10:90] = 1
    _, s = update_box(big, prev_c, prev_s, cfg)
    torch.testing.assert_close(s, prev_s * 1.1)
    tiny = torch.zeros(1, 100, 100)
    tiny[0, 80:85, 80:85] = 1
    c, s = update_box(tiny, prev_c, prev_s, cfg)
    assert torch.equal(c, prev_c) and torch.equal(s, prev_s)


def test_official_schedule_preset():
    from llb.inference.session import InferenceConfig

    official = InferenceConfig.schedule("official", init_iters=7)
    assert (official.memory.policy, official.memory.interval, official.init_iters) == ("weighted", 3, 7)
    assert InferenceConfig.schedule("paper") == InferenceConfig()


def test_training_crops_the_search_region_the_tracker_crops() -> None:
    """The training sampler (numpy, float64) and the inference session (torch, float32) place the same box."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(40, 400, 2))
        mask = np.zeros((h, w), bool)
        y0, x0 = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
        mask[y0 : y0 + int(rng.integers(2, h - y0)), x0 : x0 + int(rng.integers(2, w - x0))] = True
        mask &= rng.random((h, w)) < 0.8
        out_hw, scale = (int(rng.integers(64, 480)), int(rng.integers(64, 832))), float(rng.uniform(2, 6))
        center, size = sampler.mask_box(mask)
        trained = sampler.search_region(center, size, (h, w), out_hw, scale)
        t_center, t_size = mask_box(torch.from_numpy(mask).float()[None])
        tracked = search_region(t_center, t_size, (h, w), CropConfig(size=out_hw, scale=scale))[0]
        assert np.allclose(trained, tracked.numpy(), atol=1e-2)
    assert sampler.mask_box(np.zeros((8, 8), bool)) is None


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 4, 1, 2), (1, 2, 12, 9)])
def test_upsample2x_is_interpolate_with_its_border_clamping(mode: str, shape: tuple[int, ...]) -> None:
    """Every output pixel, the border rows and columns (where torch clamps the taps) included."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(x.double(), scale_factor=2, mode=mode, align_corners=False)
    got = upsample2x(x, mode)
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6 * want.abs().max().item())
    torch.testing.assert_close(upsample2x(x.double(), mode), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_upsample2x_keeps_channels_last_and_bfloat16(mode: str) -> None:
    x = torch.randn(1, 8, 6, 10)
    got = upsample2x(x.bfloat16(), mode)
    want = F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.float(), want, rtol=0, atol=0.02 * want.abs().max().item())


def test_upsample_to_a_size_other_than_x2_interpolates() -> None:
    x = torch.randn(1, 2, 5, 6)
    want = F.interpolate(x, size=(11, 13), mode="bicubic", align_corners=False)
    torch.testing.assert_close(upsample(x, (11, 13), "bicubic"), want, rtol=0, atol=0)
    torch.testing.assert_close(upsample(x, (10, 12), "bicubic"), upsample2x(x, "bicubic"), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize(
    "shape", [(1, 32, 12, 20), (3, 5, 7, 9), (2, 4, 1, 2), (1, 3, 2, 1), (2, 3, 3, 4), (1, 2, 9, 8)]
)
def test_upsample2x_conv3x3_is_the_conv_of_the_upsampled_map(mode: str, shape: tuple[int, ...]) -> None:
    """Every pixel, the outermost rows and columns (clamped taps read through the conv's zero padding)
    included; the weights' gradient too, since training runs the same path."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen)
    conv = nn.Conv2d(shape[1], 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
    ref = nn.Conv2d(shape[1], 2, 3, padding=1).double()
    ref.load_state_dict(conv.state_dict())
    want = ref(F.interpolate(x.double(), scale_factor=2, mode=mode, align_corners=False))
    got = upsample2x_conv3x3(x, conv.weight, conv.bias, mode)
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5 * want.abs().max().item())
    assert (got.double() - want).abs().max() < 1e-3 * (want - want.mean()).abs().max()  # not vacuous
    upstream = torch.randn(want.shape, generator=gen)
    (got * upstream).sum().backward()
    (want * upstream.double()).sum().backward()
    torch.testing.assert_close(conv.weight.grad.double(), ref.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.bias.grad.double(), ref.bias.grad, rtol=1e-5, atol=1e-5)


def test_upsample2x_conv3x3_under_bfloat16_autocast() -> None:
    x = torch.randn(1, 8, 6, 10)
    conv = nn.Conv2d(8, 1, 3, padding=1)
    want = conv(F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = upsample2x_conv3x3(x.bfloat16(), conv.weight, conv.bias, "bicubic")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0, atol=0.02 * want.abs().max().item())


@pytest.mark.parametrize("image_size", [(32, 48), (33, 45)])
def test_decoder_logits_are_the_conv_of_the_interpolated_projection(image_size: tuple[int, int]) -> None:
    """The x2 crop size takes the fused path, any other size the interpolation; both give the reference."""
    torch.manual_seed(0)
    decoder = SegmentationDecoder(DecoderConfig(widths=(8, 8, 8, 8), project_dim=4), 3, dict.fromkeys(LEVELS, 5))
    decoder.eval()
    feats = {
        name: torch.randn(2, 5, 16 >> i, 24 >> i) for i, name in enumerate(("layer1", "layer2", "layer3", "layer4"))
    }
    target = torch.randn(2, 3, 2, 3)
    projected: list[Tensor] = []
    decoder.project_conv1.register_forward_hook(lambda _m, _i, out: projected.append(torch.relu(out)))
    with torch.no_grad():
        got = decoder(target, feats, image_size)
        want = decoder.project_conv2(F.interpolate(projected[0], size=image_size, mode="bicubic", align_corners=False))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("objects", [1, 2, 5])
def test_soft_aggregate_is_the_softmax_of_log_odds(objects: int) -> None:
    """The odds form equals the RGMP formula, softmax over log(p) - log1p(-p), saturated pixels included."""
    gen = torch.Generator().manual_seed(objects)
    probs = torch.sigmoid(torch.randn(objects, 40, 50, generator=gen) * 8)
    probs[:, :5] = torch.sigmoid(torch.tensor(-100.0))  # outside every search region
    probs[0, 5:10] = 1.0
    p = probs.clamp(1e-7, 1 - 1e-7)
    stacked = torch.cat([torch.prod(1 - p, dim=0, keepdim=True), p]).clamp(1e-7, 1 - 1e-7)
    want = torch.softmax(torch.log(stacked) - torch.log1p(-stacked), dim=0)
    torch.testing.assert_close(soft_aggregate(probs), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(soft_aggregate(probs.bfloat16()), soft_aggregate(probs.bfloat16().float()))


def test_soft_aggregate_of_one_object_takes_its_background_as_the_product_of_one_factor() -> None:
    """One object skips the product over objects: the same bits as taking it."""
    probs = torch.sigmoid(torch.randn(1, 40, 50, generator=torch.Generator().manual_seed(0)) * 8)
    probs[:, :5] = torch.sigmoid(torch.tensor(-100.0))
    p = probs.clamp(1e-7, 1 - 1e-7)
    odds = torch.cat([torch.prod(1 - p, dim=0, keepdim=True), p]).clamp(1e-7, 1 - 1e-7)
    odds = odds / (1 - odds)
    assert torch.equal(soft_aggregate(probs), odds / odds.sum(0, keepdim=True))


def test_argmax0_gives_the_index_or_the_value_of_the_first_maximum() -> None:
    x = torch.rand(4, 20, 30, generator=torch.Generator().manual_seed(0))
    x[2, :5] = x[1, :5] = 2.0  # ties go to the first index
    assert torch.equal(_argmax0(x).long(), x.argmax(0))
    assert torch.equal(_argmax0(x, [0, 3, 7, 9]).long(), torch.tensor([0, 3, 7, 9])[x.argmax(0)])
    assert torch.equal(_argmax0(x[:2], [0, 5]).long(), torch.where(x[1] > x[0], 5, 0))


@pytest.mark.parametrize("weighted", [False, True])
def test_fit_carrying_the_output_matches_the_learner_over_a_growing_memory(weighted: bool) -> None:
    """Three fits on a memory that grows and drops a frame, each from the last tau: `fit` (carrying A tau
    across steps and fits) gives the learner's tau and A tau up to float rounding."""
    torch.manual_seed(0)
    learner = FewShotLearner(InductionConfig(), feature_dim=8, label_dim=4)
    feat, label, weight = torch.randn(5, 2, 8, 6, 7), torch.randn(5, 2, 4, 6, 7), torch.rand(5, 2, 4, 6, 7) + 0.5
    omega = torch.rand(5, 2) + 0.1 if weighted else None
    frames_of_fit, iters_of_fit = [[0], [0, 1, 2], [0, 2, 3, 4]], [20, 3, 3]
    tau_ref = tau = None
    fitted: dict[int, Tensor] = {}
    for frames, iters in zip(frames_of_fit, iters_of_fit, strict=True):
        sw = None if omega is None else omega[frames]
        memory = LearnerMemory(feat[frames], label[frames], weight[frames], sw)
        tau_ref, _ = learner(memory, iters, tau_ref)
        tau, out = fit(
            learner, feat[frames], label[frames], weight[frames], iters, tau, [fitted.get(f) for f in frames], sw
        )
        fitted = dict(zip(frames, out, strict=True))
        torch.testing.assert_close(tau, tau_ref, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(out, apply_filter(feat[frames], tau_ref), rtol=1e-4, atol=1e-5)
    assert tau_ref.abs().max() > 1e-3  # the fit moved tau


@pytest.mark.parametrize(("frames", "objects"), [(1, 1), (4, 1), (3, 2)])
def test_weight_gradient_is_the_learners_filter_gradient(frames: int, objects: int) -> None:
    """The fit's gradient through the convolution's weight-gradient kernel equals `filter_gradient`."""
    g = torch.Generator().manual_seed(frames)
    feat, residual = (
        torch.randn(frames, objects, 16, 9, 11, generator=g),
        torch.randn(frames, objects, 4, 9, 11, generator=g),
    )
    with torch.inference_mode():
        got = weight_gradient(feat, residual, 3)
    torch.testing.assert_close(got, filter_gradient(feat, residual, 3), rtol=1e-5, atol=1e-5)


def test_channels_last_features_are_the_same_values_in_the_fits_fast_layout() -> None:
    """Float32 copies of the features whose per-frame 4-D view is channels-last without a copy; the fit on them
    gives what it gives on contiguous features, up to float rounding."""
    torch.manual_seed(0)
    learner = FewShotLearner(InductionConfig(), feature_dim=8, label_dim=4)
    feat, label, weight = torch.randn(3, 2, 8, 6, 7), torch.randn(3, 2, 4, 6, 7), torch.rand(3, 2, 4, 6, 7) + 0.5
    laid = channels_last_features(feat.bfloat16())
    assert laid.dtype == torch.float32 and torch.equal(laid, feat.bfloat16().float())
    frames = laid.reshape(3, 16, 6, 7)
    assert frames.data_ptr() == laid.data_ptr() and frames.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        tau, out = fit(learner, laid, label, weight, 5, None, [None] * 3)
        tau_ref, out_ref = fit(learner, feat.bfloat16().float(), label, weight, 5, None, [None] * 3)
    torch.testing.assert_close(tau, tau_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
