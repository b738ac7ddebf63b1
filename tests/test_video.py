"""Video and mask I/O: round trips that check content, the errors users meet, and real DAVIS annotations."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from llb.video import (
    MAX_OBJECTS,
    MaskError,
    VideoError,
    VideoWriter,
    add_audio,
    davis_palette,
    ffmpeg_exe,
    has_audio,
    iter_frames,
    labels_from_probs,
    load_mask,
    object_ids,
    overlay,
    probe,
    save_palette_png,
    scaled_size,
)

H, W = 241, 321  # odd on purpose: yuv420p needs even sizes


def smooth_frame(t: int, height: int = H, width: int = W) -> np.ndarray:
    """A moving gradient: smooth content that H.264 at crf 23 reproduces closely."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = [(xx * 200 / width + 3 * t) % 256, yy * 255 / height, np.full_like(xx, 40 + 5 * t)]
    return np.stack(rgb, axis=-1).astype(np.uint8)


def top_level_boxes(path: Path) -> list[str]:
    """Types of the top-level ISO-BMFF boxes of an mp4, in file order."""
    data, boxes, pos = path.read_bytes(), [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size < 8:
            break
        pos += size
    return boxes


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    with VideoWriter(path, fps=12) as writer:
        for t in range(20):
            writer.write(smooth_frame(t))
    assert writer.frames_written == 20 and writer.size == (W + 1, H + 1)
    return path


def test_writer_makes_browser_playable_h264(clip: Path) -> None:
    assert sorted(p.name for p in clip.parent.iterdir()) == ["clip.mp4"]  # no temp file left behind
    ffmpeg = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(clip)], capture_output=True, text=True)
    info = ffmpeg.stderr
    assert "Video: h264" in info and "yuv420p" in info and f"{W + 1}x{H + 1}" in info, info
    boxes = top_level_boxes(clip)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # +faststart


def test_video_round_trip_keeps_content(clip: Path) -> None:
    info = probe(clip)
    assert (info.fps, info.num_frames, info.width, info.height) == (12.0, 20, W + 1, H + 1)
    assert info.frame_names[:2] == ("00000", "00001") and len(info.frame_names) == 20
    frames = list(iter_frames(clip))
    assert len(frames) == 20
    for t, frame in enumerate(frames):
        assert frame.shape == (H + 1, W + 1, 3) and frame.dtype == np.uint8
        assert np.abs(frame[:H, :W].astype(int) - smooth_frame(t)).mean() < 8
        assert np.abs(frame[:H, W].astype(int) - frame[:H, W - 1]).mean() < 8  # padding replicates the edge
    middle = list(iter_frames(clip, start=5, stop=8))
    assert len(middle) == 3 and all(np.array_equal(a, b) for a, b in zip(middle, frames[5:8]))


def test_truncated_video_ends_early_and_count_is_only_an_estimate(clip: Path, tmp_path: Path) -> None:
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    assert probe(cut).num_frames == 20  # the container still says 20
    assert 0 < sum(1 for _ in iter_frames(cut)) < 20


def test_alpha_writer_takes_rgba_and_audio_is_copied_only_from_a_source_that_has_it(clip: Path, tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "a.webm", 12, alpha=True) as writer:
        with pytest.raises(VideoError, match="HxWx4 uint8 RGBA"):
            writer.write(smooth_frame(0))
        frame = np.dstack([smooth_frame(0), np.full((H, W), 255, np.uint8)])
        frame[:50, :, 3] = 0
        writer.write(frame)
    assert writer.size == (W + 1, H + 1) and (tmp_path / "a.webm").is_file()
    cmd = [ffmpeg_exe(), "-v", "error", "-c:v", "libvpx-vp9", "-i", str(tmp_path / "a.webm")]
    raw = subprocess.run([*cmd, "-f", "rawvideo", "-pix_fmt", "rgba", "-"], capture_output=True, check=True).stdout
    alpha = np.frombuffer(raw, np.uint8).reshape(H + 1, W + 1, 4)[..., 3]
    assert (alpha[:45] < 10).all() and (alpha[60:] > 245).all()
    assert not has_audio(clip) and not add_audio(tmp_path / "a.webm", clip, 0, 1)  # nothing to copy: unchanged


def test_writer_aborts_on_error_and_checks_frames(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError), VideoWriter(path, fps=10) as writer:
        writer.write(smooth_frame(0, 32, 32))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(VideoError, match="first frame's size"), VideoWriter(path) as writer:
        writer.write(smooth_frame(0, 32, 32))
        writer.write(smooth_frame(0, 32, 48))
    with pytest.raises(VideoError, match="uint8"), VideoWriter(path) as writer:
        writer.write(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(VideoError, match="no frames"):
        VideoWriter(path).close()
    assert list(tmp_path.iterdir()) == []


def test_frame_folder_natural_order(tmp_path: Path) -> None:
    for value, name in [(10, "frame10.png"), (2, "frame2.png"), (1, "frame1.png")]:
        Image.fromarray(np.full((24, 40, 3), value, np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a frame")
    info = probe(tmp_path)
    assert info.frame_names == ("frame1", "frame2", "frame10")
    assert (info.fps, info.num_frames, info.width, info.height) == (24.0, 3, 40, 24)
    assert [int(f[0, 0, 0]) for f in iter_frames(tmp_path)] == [1, 2, 10]  # PNG is lossless
    assert [int(f[0, 0, 0]) for f in iter_frames(tmp_path, start=1)] == [2, 10]


def test_gif(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 255, 255)]
    frames = np.stack([np.broadcast_to(np.array(c, np.uint8), (30, 50, 3)) for c in colours])
    path = tmp_path / "anim.gif"
    iio.imwrite(path, frames, duration=100, loop=0)
    info = probe(path)
    assert (info.num_frames, info.width, info.height) == (6, 50, 30)
    assert info.fps == pytest.approx(10.0)
    read = list(iter_frames(path))
    assert len(read) == 6
    assert [tuple(int(v) for v in f[15, 25]) for f in read] == colours


def test_max_side_downsizes_keeping_aspect(tmp_path: Path) -> None:
    assert scaled_size(W, H, 160) == (160, 120)
    assert scaled_size(W, H, 1000) == (W, H)  # never enlarged
    frames = [smooth_frame(t) for t in range(3)]
    small = list(iter_frames(frames, max_side=160))
    assert [f.shape for f in small] == [(120, 160, 3)] * 3
    assert np.abs(small[0].astype(int) - smooth_frame(0, 120, 160)).mean() < 4  # INTER_AREA of a gradient
    Image.fromarray(frames[0]).save(tmp_path / "0.png")
    assert next(iter_frames(tmp_path, max_side=100)).shape == (75, 100, 3)
    with pytest.raises(ValueError, match="max_side"):
        iter_frames(frames, max_side=0)


def test_array_frames_are_validated() -> None:
    ok = np.zeros((8, 8, 3), np.uint8)
    assert len(list(iter_frames(np.stack([ok, ok, ok]), stop=2))) == 2
    with pytest.raises(VideoError, match="HxWx3 uint8"):
        list(iter_frames([ok, np.zeros((8, 8), np.uint8)]))
    with pytest.raises(VideoError, match="frame 1 is 9x8"):
        list(iter_frames([ok, np.zeros((8, 9, 3), np.uint8)]))


def bad_source(folder: Path, kind: str) -> Path:
    """A path that probe must refuse: missing, a 0-byte upload, a text file named .mp4, an empty folder."""
    names = {"missing": "missing.mp4", "empty": "empty.mp4", "text": "text.mp4", "folder": "frames"}
    path = folder / names[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("just some text\n" * 50)
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [("missing", "no such file"), ("empty", "empty file"), ("text", "not a video"), ("folder", "no frames")],
)
def test_bad_sources(tmp_path: Path, kind: str, message: str) -> None:
    path = bad_source(tmp_path, kind)
    with pytest.raises(VideoError, match=message) as err:
        probe(path)
    assert "upload" in str(err.value) or "check the path" in str(err.value)
    with pytest.raises(VideoError, match=message):
        list(iter_frames(path))


def test_folder_with_mixed_sizes_names_the_file(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "00000.jpg")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "00001.jpg")
    Image.fromarray(np.zeros((22, 30, 3), np.uint8)).save(tmp_path / "00002.jpg")
    frames = iter_frames(tmp_path)
    assert next(frames).shape == (20, 30, 3)
    with pytest.raises(VideoError, match=r"00002\.jpg is 30x22 but the first frame is 30x20"):
        list(frames)


def test_davis_palette_first_entries() -> None:
    palette = davis_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    expected = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128)]
    assert [tuple(c) for c in palette[:7].tolist()] == expected
    assert tuple(palette[8]) == (64, 0, 0) and tuple(palette[255]) == (224, 224, 192)
    assert len({tuple(c) for c in palette.tolist()}) == 256


def test_palette_png_round_trip(tmp_path: Path) -> None:
    labels = np.zeros((30, 40), np.uint8)
    labels[2:10, 3:12], labels[12:20, 5:30], labels[22:28, 30:38], labels[0, :] = 1, 2, 7, 255
    path = tmp_path / "00000.png"
    save_palette_png(path, labels)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert np.array_equal(np.array(image), labels)
        assert np.array_equal(np.array(image.getpalette()[:768], np.uint8).reshape(256, 3), davis_palette())
    loaded = load_mask(path, size=(40, 30))
    assert object_ids(loaded) == [1, 2, 7]
    assert np.array_equal(loaded, np.where(labels == 255, 0, labels))  # void is ignored


def test_binary_and_grey_masks(tmp_path: Path) -> None:
    shape = np.zeros((16, 16), bool)
    shape[4:12, 4:12] = True
    Image.fromarray(shape.astype(np.uint8) * 255).save(tmp_path / "l.png")
    Image.fromarray(shape).save(tmp_path / "bits.png")
    Image.fromarray(shape.astype(np.uint8)).save(tmp_path / "zero_one.png")  # a numpy 0/1 array saved as is
    Image.fromarray(np.repeat(shape[..., None].astype(np.uint8) * 255, 3, axis=2)).save(tmp_path / "rgb.png")
    soft = (shape * 200 + 60 * (~shape)).astype(np.uint8)  # grey background below the 128 threshold
    Image.fromarray(soft).save(tmp_path / "soft.png")
    for name in ["l.png", "bits.png", "zero_one.png", "rgb.png", "soft.png"]:
        assert np.array_equal(load_mask(tmp_path / name), shape.astype(np.uint8)), name


def test_colour_mask_ids(tmp_path: Path) -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[0:5, 0:5] = (10, 200, 30)  # not a DAVIS colour, appears first
    rgb[6:10, 0:5] = (0, 128, 0)  # DAVIS 2
    rgb[12:15, 0:5] = (200, 10, 90)  # not a DAVIS colour, appears last
    rgb[16:20, 10:20] = (128, 0, 0)  # DAVIS 1
    rgb[0, 29] = (224, 224, 192)  # DAVIS void
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    labels = load_mask(tmp_path / "colour.png", size=(30, 20))
    assert object_ids(labels) == [1, 2, 3, 4]
    assert (labels[17, 15], labels[7, 2], labels[2, 2], labels[13, 2], labels[0, 29]) == (1, 2, 3, 4, 0)
    rgba = np.dstack([np.full((20, 30, 3), 255, np.uint8), np.zeros((20, 30), np.uint8)])
    rgba[5:10, 5:10] = (255, 0, 0, 255)  # transparent pixels are white but background
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    labels = load_mask(tmp_path / "rgba.png")
    assert object_ids(labels) == [1] and int(labels.sum()) == 25


def test_mask_errors(tmp_path: Path) -> None:
    labels = np.zeros((360, 640), np.uint8)
    labels[100:200, 100:200] = 1
    save_palette_png(tmp_path / "mask.png", labels)
    with pytest.raises(MaskError, match=r"mask is 640x360 \(aspect 1.78\) but the video is 480x480") as err:
        load_mask(tmp_path / "mask.png", size=(480, 480))
    assert isinstance(err.value, VideoError) and isinstance(err.value, ValueError)
    assert "same aspect ratio" in str(err.value)
    dot = np.zeros((480, 854), np.uint8)
    dot[5, 5] = 1
    save_palette_png(tmp_path / "dot.png", dot)
    with pytest.raises(MaskError, match="vanish when it is scaled to the video's 64x36"):
        load_mask(tmp_path / "dot.png", size=(64, 36))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(MaskError, match="draw or click the object first"):
        load_mask(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(MaskError, match="unreadable mask"):
        load_mask(tmp_path / "text.png")
    with pytest.raises(MaskError, match="no such mask"):
        load_mask(tmp_path / "missing.png")
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    with pytest.raises(MaskError, match=f"at most {MAX_OBJECTS} objects"):
        load_mask(tmp_path / "noise.png")


@pytest.mark.parametrize("source", [(854, 480), (1280, 720), (320, 180), (1920, 1088)])
def test_mask_of_the_same_aspect_ratio_is_scaled_to_the_processed_size(tmp_path: Path, source) -> None:
    """A mask drawn on the source video (854x480) is accepted for its frames processed at 640x360."""
    width, height = source
    labels = np.zeros((height, width), np.uint8)
    labels[height // 4 : height // 2, width // 8 : width // 2] = 3
    labels[height // 2 :, width // 2 :] = 7
    save_palette_png(tmp_path / "source.png", labels)
    scaled = load_mask(tmp_path / "source.png", size=(640, 360))
    assert scaled.shape == (360, 640) and object_ids(scaled) == [3, 7]
    assert set(np.unique(scaled)) == {0, 3, 7}  # nearest neighbour: no new ids at the borders
    expected = np.zeros((360, 640), np.uint8)
    expected[90:180, 80:320], expected[180:, 320:] = 3, 7
    assert np.mean(scaled != expected) < 0.01


def test_overlay_colours_only_objects() -> None:
    frame = smooth_frame(0, 40, 60)
    labels = np.zeros((40, 60), np.uint8)
    labels[5:25, 5:30], labels[20:35, 35:55], labels[0, 0] = 1, 2, 255
    before = frame.copy()
    out = overlay(frame, labels, alpha=0.4, contour=False)
    assert np.array_equal(frame, before)  # input untouched
    objects = (labels == 1) | (labels == 2)
    assert np.array_equal(out[~objects], frame[~objects])  # background and void unchanged
    colours = davis_palette()[labels]
    expected = np.rint(frame * 0.6 + colours * 0.4).astype(np.uint8)
    assert np.abs(out[objects].astype(int) - expected[objects]).max() <= 1
    assert np.array_equal(out, overlay(frame, labels, alpha=0.4, contour=False))  # deterministic

    outlined = overlay(frame, labels, alpha=0.4)
    assert np.array_equal(outlined[~objects], frame[~objects])
    assert tuple(outlined[5, 10]) == (255, 255, 255) and tuple(outlined[34, 40]) == (255, 255, 255)  # outlines
    assert tuple(outlined[6, 10]) == (128, 0, 0) and tuple(outlined[33, 40]) == (0, 128, 0)  # then the colour
    assert np.array_equal(outlined[15, 15], out[15, 15])  # interior only blended
    assert np.array_equal(outlined, overlay(frame, labels, alpha=0.4))


def test_overlay_outline_shows_a_red_object_on_a_red_subject() -> None:
    red = np.zeros((480, 640, 3), np.uint8)
    red[...] = (128, 0, 0)  # the colour of object 1
    labels = np.zeros((480, 640), np.uint8)
    labels[100:300, 200:400] = 1
    shown = overlay(red, labels)
    assert np.array_equal(shown[150:250, 250:350], red[150:250, 250:350])  # the blend alone shows nothing
    for border in (shown[100, 200:400], shown[299, 200:400], shown[100:300, 200], shown[100:300, 399]):
        assert (border == 255).all()  # but the outline does
    assert np.array_equal(shown[labels == 0], red[labels == 0])


def test_labels_from_probs() -> None:
    probs = np.zeros((3, 2, 3), np.float32)
    probs[0] = 0.5
    probs[1, 0, :] = 0.9
    probs[2, 1, 2] = 0.8
    labels = labels_from_probs(probs, [3, 7])
    assert labels.dtype == np.uint8
    assert labels.tolist() == [[3, 3, 3], [0, 0, 7]]
    with pytest.raises(ValueError, match="shape"):
        labels_from_probs(probs, [3])
    with pytest.raises(ValueError, match="distinct"):
        labels_from_probs(probs, [3, 3])


def test_real_davis_annotation(data_dir: Path, tmp_path: Path) -> None:
    root = data_dir / "davis2017-fragments"
    info = probe(root / "JPEGImages" / "tennis")
    assert (info.num_frames, info.width, info.height, info.frame_names) == (2, 854, 480, ("00000", "00001"))
    with Image.open(root / "Annotations" / "tennis" / "00000.png") as image:
        assert image.mode == "P"
        raw = np.array(image)
    assert object_ids(raw) == [1, 2] and (raw == 255).any()
    labels = load_mask(root / "Annotations" / "tennis" / "00000.png", size=(info.width, info.height))
    assert object_ids(labels) == [1, 2] and not (labels == 255).any()
    assert np.array_equal(labels, np.where(raw == 255, 0, raw))
    save_palette_png(tmp_path / "00000.png", raw)
    assert (tmp_path / "00000.png").stat().st_size > 0
    with Image.open(tmp_path / "00000.png") as image:
        assert np.array_equal(np.array(image), raw)
    frame = next(iter_frames(root / "JPEGImages" / "tennis"))
    shown = overlay(frame, labels)
    assert shown.shape == frame.shape and np.array_equal(shown[labels == 0], frame[labels == 0])
    assert not np.array_equal(shown[labels == 1], frame[labels == 1])


@pytest.mark.parametrize("width", [160, 320, 1280])
def test_untrained_stamp_fits_narrow_frames(width):
    from llb.checkpoint import UNTRAINED
    from llb.video.export import stamp

    out = stamp(np.full((120, width, 3), 200, np.uint8), UNTRAINED)
    text = (out[..., 0] > 200) & (out[..., 1] < 120)  # the banner's red letters
    cols = np.flatnonzero(text.any(axis=0))
    assert cols.size and cols.min() > 0 and cols.max() < width - 1  # not cut at either edge


def test_one_exporter_fans_frames_out_and_drops_partial_files_on_error(tmp_path):
    """The same frames reach every sink (the zips hold the folder's PNG bytes; parts of one zip share it); a
    failing sink's error reaches the caller and no partial video or zip is left."""
    import io
    import zipfile

    from llb.video.export import TRANSPARENT, Archive, CutoutVideo, Exporter, Frame, OverlayVideo, PaletteFolder

    labels = np.zeros((H, W), np.uint8)
    labels[40:120, 60:200] = 2
    shared = Archive(tmp_path / "shared.zip", deflate=True)
    sinks = [PaletteFolder(tmp_path / "masks"), Archive(tmp_path / "masks.zip", readme="hi\n"), shared.part("a/v")]
    sinks.append(CutoutVideo(tmp_path / "cut.webm", TRANSPARENT, rgba=tmp_path / "rgba.zip"))
    with Exporter(sinks) as exporter:
        for t in range(3):
            exporter.write(smooth_frame(t), labels, f"{t:05d}")
    shared.part("b/w").write(Frame("x", smooth_frame(0), labels))  # a second stream into the same zip
    shared.close(ok=True)
    with zipfile.ZipFile(tmp_path / "masks.zip") as zf:
        assert zf.read("README.txt") == b"hi\n"
        assert all(
            zf.read(f"masks/{t:05d}.png") == (tmp_path / "masks" / f"{t:05d}.png").read_bytes() for t in range(3)
        )
    with zipfile.ZipFile(tmp_path / "shared.zip") as zf:
        assert sorted(zf.namelist()) == ["a/v/00000.png", "a/v/00001.png", "a/v/00002.png", "b/w/x.png"]
    with zipfile.ZipFile(tmp_path / "rgba.zip") as zf:
        rgba = np.array(Image.open(io.BytesIO(zf.read("cutout/00001.png"))))
    assert np.array_equal(rgba[..., 3] == 255, labels == 2) and probe(tmp_path / "cut.webm").num_frames == 3

    class Full(PaletteFolder):
        def write(self, frame):
            if frame.name == "00001":
                raise OSError("disk full")
            super().write(frame)

    out = tmp_path / "failed"
    sinks = [Full(out / "masks"), OverlayVideo(out / "overlay.mp4"), Archive(out / "masks.zip")]
    with pytest.raises(OSError, match="disk full"), Exporter(sinks) as exporter:
        for t in range(4):
            exporter.write(smooth_frame(t), labels, f"{t:05d}")
    assert sorted(p.name for p in out.iterdir()) == ["masks"]  # no video, no zip, no partial file
