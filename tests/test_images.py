"""Every PIL mode becomes the 8-bit RGB image it depicts, checked against hand-computed pixels."""

import numpy as np
import pytest
import torch
from PIL import Image
from types import SimpleNamespace

from hf_rcka.errors import DataError
from hf_rcka.data.images import BACKGROUND, decode_image, to_rgb

WHITE = BACKGROUND[0]


def rgb(image: Image.Image) -> np.ndarray:
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out).astype(int)


def grey(*values: float) -> np.ndarray:
    """Expected RGB row for grey levels."""
    return np.array([[[v, v, v] for v in values]])


def over_white(colour: float, alpha: float) -> float:
    return colour * alpha / 255 + WHITE * (1 - alpha / 255)


def test_bilevel_and_grey():
    assert np.array_equal(rgb(Image.fromarray(np.array([[True, False]]))), grey(255, 0))
    assert np.array_equal(rgb(Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))), grey(0, 77, 255))


@pytest.mark.parametrize("mode,dtype", [("I;16", "<u2"), ("I;16B", ">u2"), ("I;16L", "<u2")])
def test_sixteen_bit_is_scaled_by_its_range_not_clipped_to_white(mode, dtype):
    values = np.array([[0, 1000, 30000, 65535]])
    image = Image.frombuffer(mode, (4, 1), values.astype(dtype).tobytes(), "raw", mode, 0, 1)
    assert image.mode == mode
    assert np.array_equal(rgb(image), grey(0, 4, 117, 255))  # v / 257, rounded (convert() gave 0, 255, 255, 255)


def test_int32_holding_sixteen_bit_values_and_other_ranges():
    assert np.array_equal(rgb(Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32))), grey(0, 4, 255))
    # outside 0..65535: stretched from min..max
    assert np.array_equal(rgb(Image.fromarray(np.array([[-50, 0, 205]], dtype=np.int32))), grey(0, 50, 255))


def test_float_in_unit_range_and_outside_it():
    assert np.array_equal(rgb(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))), grey(0, 128, 255))
    assert np.array_equal(rgb(Image.fromarray(np.array([[-1.0, 0.0, 3.0]], dtype=np.float32))), grey(0, 64, 255))
    assert np.array_equal(rgb(Image.fromarray(np.array([[np.nan, 1.0]], dtype=np.float32))), grey(0, 255))
    # a resampled [0, 1] image overshoots a little, and 8-bit values may come as floats: neither is
    # stretched to its own extremes (0.386 read 164 beside one pixel of -1e-6; 100 of [100, 200] read 0)
    floats = np.array([[-1e-6, 0.386, 0.5, 1.0001]], dtype=np.float32)
    assert np.array_equal(rgb(Image.fromarray(floats)), grey(0, 98, 128, 255))
    assert np.array_equal(rgb(Image.fromarray(np.array([[100.0, 200.0]], dtype=np.float32))), grey(100, 200))


def test_alpha_is_composited_over_the_background():
    rgba = Image.fromarray(np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 0, 128]]], dtype=np.uint8))
    expected = [[200, 100, 0], [WHITE] * 3, [over_white(c, 128) for c in (200, 100, 0)]]
    assert np.abs(rgb(rgba) - np.array([expected])).max() <= 1
    la = Image.fromarray(np.array([[[60, 255], [60, 0], [60, 64]]], dtype=np.uint8), mode="LA")
    assert np.abs(rgb(la) - grey(60, WHITE, over_white(60, 64))).max() <= 1


def test_premultiplied_alpha_modes():
    # premultiplied colour c_pm over white: c_pm + WHITE * (1 - a)
    la = Image.frombytes("La", (1, 1), bytes([64, 128]))
    assert np.abs(rgb(la) - grey(64 + WHITE * (1 - 128 / 255))).max() <= 1
    rgba = Image.frombytes("RGBa", (1, 1), bytes([64, 32, 0, 128]))
    expected = [[[c + WHITE * (1 - 128 / 255) for c in (64, 32, 0)]]]
    assert np.abs(rgb(rgba) - np.array(expected)).max() <= 1


def _palette(image: Image.Image) -> Image.Image:
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    return image


def test_palette_with_and_without_transparency():
    plain = _palette(Image.frombytes("P", (2, 1), bytes([0, 1])))
    assert np.array_equal(rgb(plain), np.array([[[10, 20, 30], [200, 100, 50]]]))
    plain.info["transparency"] = 1  # colour 1 is transparent: the background shows
    assert np.array_equal(rgb(plain), np.array([[[10, 20, 30], [WHITE] * 3]]))
    pa = _palette(Image.frombytes("PA", (2, 1), bytes([0, 255, 1, 128])))
    expected = [[[10, 20, 30], [over_white(c, 128) for c in (200, 100, 50)]]]
    assert np.abs(rgb(pa) - np.array(expected)).max() <= 1


def test_cmyk():
    c, m, y, k = 40, 200, 0, 100
    image = Image.frombytes("CMYK", (1, 1), bytes([c, m, y, k]))
    expected = [[[(255 - v) * (255 - k) / 255 for v in (c, m, y)]]]
    assert np.abs(rgb(image) - np.array(expected)).max() <= 1


def test_ycbcr_follows_the_jfif_formulas():
    y, cb, cr = 120, 90, 170
    image = Image.frombytes("YCbCr", (1, 1), bytes([y, cb, cr]))
    expected = [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)]
    assert np.abs(rgb(image) - np.array([[expected]])).max() <= 2


def test_other_modes_reach_rgb():
    assert np.array_equal(rgb(Image.new("RGBX", (1, 1), (1, 2, 3, 0))), np.array([[[1, 2, 3]]]))
    assert np.array_equal(rgb(Image.new("HSV", (1, 1), (0, 255, 255))), np.array([[[255, 0, 0]]]))
    neutral = rgb(Image.new("LAB", (1, 1), (255, 128, 128)))  # L*=100, a*=b*=0: white, not a colour cast
    assert neutral.min() >= 250
    image = Image.new("RGB", (2, 2), (9, 8, 7))
    assert to_rgb(image) is image


def test_unreadable_files_are_named(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(good)
    assert np.asarray(decode_image({"path": str(good), "bytes": None}))[0, 0].tolist() == [1, 2, 3]
    truncated = tmp_path / "truncated.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path in (truncated, text):
        with pytest.raises(DataError, match=str(path)):
            decode_image({"path": str(path), "bytes": None})


def test_a_git_lfs_pointer_is_named_as_such(tmp_path):
    """A dataset cloned without git lfs holds text pointers under its images' names: every image was
    skipped as 'cannot identify image file', which says nothing of the fix (git lfs pull)."""
    from hf_rcka.data.images import UnreadableImage

    pointer = tmp_path / "0.jpg"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234\n")
    for value in (str(pointer), {"path": None, "bytes": pointer.read_bytes()}):
        with pytest.raises(UnreadableImage, match=r"a Git LFS pointer, not the image.*git lfs pull"):
            decode_image(value)
    (tmp_path / "1.jpg").write_text("hello")
    with pytest.raises(UnreadableImage, match="UnidentifiedImageError"):
        decode_image(str(tmp_path / "1.jpg"))


def test_an_image_over_pillows_pixel_limit_names_the_fix(tmp_path, monkeypatch):
    """Pillow refuses an image over its pixel limit as a possible decompression bomb; the skip said
    only Pillow's words, which name no way out (downscaling the file is one)."""
    from hf_rcka.data.images import UnreadableImage

    path = tmp_path / "scan.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # errors above twice the limit
    with pytest.raises(UnreadableImage, match=r"DecompressionBombError: .*downscale the file"):
        decode_image(str(path))


def test_a_skipped_image_is_replaced_by_a_readable_one_of_its_batch():
    from hf_rcka.data.datasets import collate

    one, two = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    batch = collate([{"pixel_values": one, "labels": 0}, {"pixel_values": None, "labels": 1},
                     {"pixel_values": two, "labels": 2}])
    assert batch["pixel_values"].shape == (3, 3, 2, 2) and batch["labels"].tolist() == [0, 0, 2]  # in its own row
    with pytest.raises(DataError, match="all 2 images of a batch are unreadable"):
        collate([{"pixel_values": None, "labels": 0}, {"pixel_values": None, "labels": 1}])


def test_an_unreadable_evaluation_image_is_replaced_by_an_uncounted_copy():
    from hf_rcka.data.datasets import collate
    from hf_rcka.losses import IGNORE_INDEX

    one, two = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    # with_transforms(evaluation=True) labels a skipped image IGNORE_INDEX; its stand-in keeps that label
    batch = collate([{"pixel_values": one, "labels": 0}, {"pixel_values": None, "labels": IGNORE_INDEX},
                     {"pixel_values": two, "labels": 2}])
    # in its own row: under DDP, rows past the dataset's end are repeats that gather_for_metrics cuts off by
    # position, and an IGNORE_INDEX row moved to the end let a repeat take its place and count
    assert batch["labels"].tolist() == [0, IGNORE_INDEX, 2] and torch.equal(batch["pixel_values"][1], one)


def test_a_skipped_training_image_keeps_its_label_and_an_evaluation_one_is_not_counted(tmp_path):
    """with_transforms labels a skipped image IGNORE_INDEX in evaluation only: in training its row's
    stand-in (a readable image of the batch) trains with that image's label, where IGNORE_INDEX
    there would have dropped the row from the cross-entropy, a smaller batch than the recipe's."""
    import datasets
    from torchvision.transforms import PILToTensor

    from hf_rcka.data.bad_images import SkippedImages
    from hf_rcka.data.datasets import collate, with_transforms
    from hf_rcka.losses import IGNORE_INDEX

    (tmp_path / "bad.png").write_text("not an image")
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4), (9, 0, 0)).save(good)
    data = datasets.Dataset.from_dict({"image": [str(good), str(tmp_path / "bad.png")], "label": ["a", "b"]})
    ledger = SkippedImages(str(tmp_path / "run"), limit=4)
    for evaluation, labels in ((False, [0, 0]), (True, [0, IGNORE_INDEX])):
        items = with_transforms(data, PILToTensor(), "image", "label", ["a", "b"], skipped=ledger, evaluation=evaluation)
        batch = collate([items[0], items[1]])
        assert batch["labels"].tolist() == labels and batch["pixel_values"][:, 0, 0, 0].tolist() == [9, 9]


def test_a_skipped_file_is_logged_and_listed_once(tmp_path, caplog):
    from hf_rcka.data.bad_images import SkippedImages

    ledger = SkippedImages(str(tmp_path), limit=5)
    for _ in range(3):  # evaluated three times, or three epochs
        ledger.record("val/cat/broken.jpg", "OSError: image file is truncated")
    ledger.record("val/dog/notes.jpg", "UnidentifiedImageError: cannot identify")
    lines = (tmp_path / "_skipped_images.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["val/cat/broken.jpg", "val/dog/notes.jpg"]
    assert [r.getMessage() for r in caplog.records].count(
        "skipped unreadable image val/cat/broken.jpg: OSError: image file is truncated") == 1


def _collate_noting_shared_memory(examples):
    from hf_rcka.data.datasets import collate

    batch = collate(examples)
    batch["shared_when_built"] = torch.tensor(batch["pixel_values"].is_shared())
    return batch


def test_a_worker_builds_its_batch_in_shared_memory():
    """In a DataLoader worker the batch is stacked straight into shared memory, as timm's (and
    torch's default) collate does, not into private memory the worker's queue must copy again."""
    examples = [{"pixel_values": torch.full((3, 4, 4), float(i)), "labels": i} for i in range(6)]
    loader = torch.utils.data.DataLoader(examples, batch_size=3, num_workers=1,
                                         collate_fn=_collate_noting_shared_memory)
    batches = list(loader)
    assert [bool(b["shared_when_built"]) for b in batches] == [True, True]
    pixels = torch.cat([b["pixel_values"] for b in batches])
    assert torch.equal(pixels, torch.stack([e["pixel_values"] for e in examples]))
    assert torch.cat([b["labels"] for b in batches]).tolist() == list(range(6))


def test_a_row_without_an_image_is_an_unreadable_image_not_an_attribute_error():
    from hf_rcka.data.images import UnreadableImage

    for value in (None, np.zeros((4, 4, 3), dtype=np.uint8)):
        with pytest.raises(UnreadableImage, match="holds no image file, bytes or PIL image"):
            decode_image(value)


def test_prepared_data_goes_to_spawned_dataloader_workers(tmp_path):
    """Workers started with spawn or forkserver (macOS, Windows, Python 3.14's Linux default) get
    the dataset pickled: its transform was a closure, and the first batch failed."""
    import datasets
    from torchvision.transforms import PILToTensor

    from hf_rcka.data.bad_images import SkippedImages
    from hf_rcka.data.datasets import collate, with_transforms

    images = [Image.new("RGB", (4, 4), (60 * i, 0, 0)) for i in range(4)]
    data = datasets.Dataset.from_dict({"image": images, "label": ["b", "a", "b", "a"]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.Value("string")}))
    prepared = with_transforms(data, PILToTensor(), "image", "label", ["a", "b"],
                               skipped=SkippedImages(str(tmp_path), limit=1))
    loader = torch.utils.data.DataLoader(prepared, batch_size=4, num_workers=1, collate_fn=collate,
                                         multiprocessing_context="spawn")
    batch = next(iter(loader))
    assert batch["labels"].tolist() == [1, 0, 1, 0]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0, 60, 120, 180]


@pytest.mark.parametrize("mode, key, pixels", [
    ("L", 0, np.array([[0, 200]], dtype=np.uint8)),
    ("RGB", (0, 0, 0), np.array([[[0, 0, 0], [200, 200, 200]]], dtype=np.uint8)),
    ("I;16", 0, np.array([[0, 51400]], dtype=np.uint16)),
])
def test_a_png_colour_key_is_transparency_too(mode, key, pixels):
    """optipng and oxipng store an RGBA image whose alpha is on/off as L or RGB plus a tRNS colour
    key: its transparent pixels were decoded black, where the RGBA form of the same picture is white."""
    import io

    buffer = io.BytesIO()
    image = Image.fromarray(pixels) if mode == "I;16" else Image.fromarray(pixels, mode=mode)
    assert image.mode == mode
    image.save(buffer, "PNG", transparency=key)
    decoded = np.asarray(decode_image({"bytes": buffer.getvalue(), "path": None})).astype(int)
    assert decoded[0, 0].tolist() == [WHITE] * 3, "the keyed colour is transparent: the background shows"
    assert decoded[0, 1].tolist() == [200] * 3


def test_an_exif_rotated_photo_is_upright_as_a_file_and_as_a_pil_image():
    """datasets turns a decoded file by its EXIF orientation; a PIL image a caller's own dataset
    held was taken sideways."""
    import io

    pixels = np.zeros((8, 16, 3), dtype=np.uint8)
    pixels[:, :4] = 255  # a white band on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif, quality=100)
    from_file = decode_image(buffer.getvalue())
    from_pil = decode_image(Image.open(io.BytesIO(buffer.getvalue())))
    assert from_file.size == from_pil.size == (8, 16)  # upright: 8 wide, 16 high
    assert np.array_equal(np.asarray(from_file), np.asarray(from_pil))
    assert np.asarray(from_pil)[:4].mean() > 200 > np.asarray(from_pil)[4:].mean()  # the band is now on top



def test_a_column_declared_grayscale_is_said_to_train_in_colour(caplog):
    """Image(mode="L") was not applied (every image is decoded to RGB) without a word: a pure red
    image in a grayscale-declared column trained red."""
    import datasets
    from torchvision.transforms import PILToTensor

    from hf_rcka.data.datasets import with_transforms

    data = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4), (255, 0, 0))] * 2, "label": ["a", "b"]},
                                      features=datasets.Features({"image": datasets.Image(mode="L"),
                                                                  "label": datasets.Value("string")}))
    with caplog.at_level("WARNING"):
        prepared = with_transforms(data, PILToTensor(), "image", "label", ["a", "b"])
    assert prepared[0]["pixel_values"][:, 0, 0].tolist() == [255, 0, 0]
    assert "column 'image' declares Image(mode='L'), which is not applied: every image is decoded to RGB" in caplog.text


# the run stops once more than max_bad_images files were skipped
def test_exactly_max_bad_images_skipped_files_do_not_stop_the_run(tmp_path):
    from hf_rcka.data.bad_images import SkippedImages, SkippedImagesCallback
    from hf_rcka.errors import DataError

    ledger = SkippedImages(str(tmp_path), limit=2)
    callback, args = SkippedImagesCallback(ledger), SimpleNamespace(device="cpu", logging_steps=1)
    ledger.record("a.jpg", "truncated")
    ledger.record("b.jpg", "truncated")
    callback.on_epoch_end(args, None, None)  # 2 skipped, max_bad_images 2: the run goes on
    ledger.record("c.jpg", "truncated")
    with pytest.raises(DataError, match=r"3 image files could not be read \(more than max_bad_images=2\)"):
        callback.on_epoch_end(args, None, None)



def test_the_over_limit_error_names_the_first_ten_files_and_counts_the_rest(tmp_path):
    """The stop's one line lists the first 10 skipped files and says how many more the ledger holds:
    a name left out of both would be a file the user never hears of."""
    from hf_rcka.data.bad_images import SkippedImages

    ledger = SkippedImages(str(tmp_path), limit=0)
    for i in range(11):
        ledger.record(f"{i}.jpg", "truncated")
    message = str(ledger.over_limit_error())
    assert "11 image files could not be read" in message
    assert ": " + ", ".join(f"{i}.jpg" for i in range(10)) + " and 1 more." in message
    ledger = SkippedImages(str(tmp_path / "ten"), limit=0)
    for i in range(10):
        ledger.record(f"{i}.jpg", "truncated")
    assert ", ".join(f"{i}.jpg" for i in range(10)) + ". The full list" in str(ledger.over_limit_error())


def test_a_file_two_processes_appended_at_once_counts_once_against_the_limit(tmp_path):
    """Two dataloader workers (or ranks) meeting the same unreadable file at once may both append it:
    counted twice, a run at exactly max_bad_images distinct files stopped."""
    from hf_rcka.data.bad_images import LEDGER_NAME, SkippedImages, SkippedImagesCallback

    (tmp_path / LEDGER_NAME).write_text("a.jpg\ttruncated\nb.jpg\ttruncated\na.jpg\ttruncated\n\n")
    ledger = SkippedImages(str(tmp_path), limit=2)
    assert ledger.entries() == ["a.jpg", "b.jpg"] and ledger.count() == 2
    SkippedImagesCallback(ledger).on_epoch_end(SimpleNamespace(device="cpu", logging_steps=1), None, None)


def test_a_reason_over_several_lines_is_one_ledger_line(tmp_path):
    """An error's message may hold newlines or tabs: written as it was, its second line read as another
    skipped file (counted against max_bad_images, named in the stop's list)."""
    from hf_rcka.data.bad_images import SkippedImages

    ledger = SkippedImages(str(tmp_path), limit=5)
    ledger.record("a.jpg", "OSError: broken data stream\nwhile reading\tchunk IDAT")
    assert ledger.entries() == ["a.jpg"]
    assert (tmp_path / "_skipped_images.tsv").read_text() == "a.jpg\tOSError: broken data stream while reading chunk IDAT\n"


def test_the_limit_is_checked_at_logging_steps_and_at_trainings_end(tmp_path):
    """Too many skipped files stop the run at the next logging step (not only at an epoch's end, hours
    on), and at training's end: a max_steps run that stopped mid-epoch without a final evaluation
    ended with exit 0 and the files unsaid."""
    from hf_rcka.data.bad_images import SkippedImages, SkippedImagesCallback

    ledger = SkippedImages(str(tmp_path), limit=0)
    ledger.record("a.jpg", "truncated")
    args = SimpleNamespace(device="cpu", logging_steps=2)
    callback = SkippedImagesCallback(ledger)
    callback.on_step_end(args, SimpleNamespace(global_step=3), None)  # no logging step: no collective
    with pytest.raises(DataError, match="more than max_bad_images=0"):
        callback.on_step_end(args, SimpleNamespace(global_step=4), None)
    with pytest.raises(DataError, match="more than max_bad_images=0"):
        SkippedImagesCallback(ledger).on_train_end(args, None, None)


def test_a_new_runs_count_starts_at_zero_and_its_end_says_one_skipped_file(tmp_path):
    """A run started anew in the folder of an earlier one counted that run's skipped files (of other
    data, perhaps) against its own max_bad_images; the run's end said nothing of a single skipped file."""
    from hf_rcka.data.bad_images import SkippedImages

    earlier = SkippedImages(str(tmp_path), limit=5)
    earlier.record("old/a.jpg", "truncated")
    ledger = SkippedImages(str(tmp_path), limit=5)
    ledger.reset()
    assert ledger.count() == 0 and ledger.summary() is None
    ledger.record("new/b.jpg", "truncated")
    assert ledger.summary() == ("skipped 1 unreadable image file(s) (in training each replaced by another image of "
                                f"its batch, in evaluation not counted); list: {ledger.path}")

def test_a_concatenation_is_decoded_here_only_when_every_part_is():
    """A ConcatDataset of images decoded here and ready pixel_values counted as decoded here when
    any part was: the card then told readers to decode as training did (over white, 16-bit scaled),
    which the caller's part never was."""
    import datasets
    from torchvision.transforms import PILToTensor

    from hf_rcka.data.datasets import decodes_its_images, with_transforms

    data = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))] * 2, "label": ["a", "b"]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.Value("string")}))
    here = with_transforms(data, PILToTensor(), "image", "label", ["a", "b"])
    ready = datasets.Dataset.from_dict({"pixel_values": [[[[0.0]]]] * 2, "labels": [0, 1]})
    concat = torch.utils.data.ConcatDataset
    assert decodes_its_images(concat([here, torch.utils.data.Subset(here, [1])]))
    assert not decodes_its_images(concat([here, ready])) and not decodes_its_images(concat([ready, here]))
    assert not decodes_its_images(torch.utils.data.Subset(concat([here, ready]), [0]))


def test_edge_ranges_and_keys_of_the_modes_a_plain_convert_gets_wrong():
    """Each went untested: a 32-bit image past 0..65535 read as 16-bit (clipped to white, not
    stretched); a flat float image above 255 read black (not white); an infinite float pixel stretched
    the rest to black (it is read as 0, as NaN is); a bilevel PNG's transparency key ignored; and
    ``to_rgb``'s own ``background`` ignored for the default white."""
    assert np.array_equal(rgb(Image.fromarray(np.array([[0, 70000, 140000]], dtype=np.int32))), grey(0, 128, 255))
    assert np.array_equal(rgb(Image.fromarray(np.array([[300.0, 300.0]], dtype=np.float32))), grey(255, 255))
    assert np.array_equal(rgb(Image.fromarray(np.array([[0.0, 0.5, np.inf]], dtype=np.float32))), grey(0, 128, 0))
    bilevel = Image.fromarray(np.array([[False, True]]))
    bilevel.info["transparency"] = 0  # black is transparent: the background shows
    assert np.array_equal(rgb(bilevel), grey(WHITE, 255))
    clear = Image.new("RGBA", (1, 1), (10, 20, 30, 0))
    assert np.asarray(to_rgb(clear, background=(0, 0, 0))).tolist() == [[[0, 0, 0]]]
