"""Every input kind of `rlhf-img encode` reads the same pairs, in order, and encodes them to exactly what
`policy.encode_images` gives for the fitted images: an image folder (.txt captions or metadata.jsonl), jsonl / csv /
parquet tables (paths relative to the file, or embedded bytes), `save_to_disk` folders (an Image feature or paths)
and webdataset tars (.txt or .json captions)."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from .encode_helpers import encode, expected_actions, load_shapes_policy, png_bytes, render_pairs, write_image_folder

COUNT = 12


@pytest.fixture(scope="module")
def pairs():
    return render_pairs(COUNT, seed=1)


@pytest.fixture(scope="module")
def expected(pairs):
    return expected_actions(load_shapes_policy(), [image for _, image in pairs])


def _folder_txt(root, pairs):
    write_image_folder(root / "folder", pairs)
    return root / "folder"


def _folder_metadata(root, pairs):
    write_image_folder(root / "meta", pairs, captions="metadata")
    return root / "meta"


def _relative_images(root, pairs) -> list[str]:
    write_image_folder(root / "tables" / "images", pairs, captions="none")
    return [f"images/{index:04d}.png" for index in range(len(pairs))]


def _jsonl(root, pairs):
    paths = _relative_images(root, pairs)
    with open(root / "tables" / "pairs.jsonl", "w") as f:
        for path, (caption, _) in zip(paths, pairs):
            f.write(json.dumps({"image": path, "caption": caption}) + "\n")
    return root / "tables" / "pairs.jsonl"


def _csv(root, pairs):
    paths = _relative_images(root, pairs)
    with open(root / "tables" / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows([path, caption] for path, (caption, _) in zip(paths, pairs))
    return root / "tables" / "pairs.csv"


def _parquet_bytes(root, pairs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [{"bytes": png_bytes(image), "path": f"{index}.png"} for index, (_, image) in enumerate(pairs)]
    os.makedirs(root / "parquet", exist_ok=True)
    pq.write_table(
        pa.table({"image": images, "caption": [caption for caption, _ in pairs]}), root / "parquet" / "pairs.parquet"
    )
    return root / "parquet" / "pairs.parquet"


def _saved_image_feature(root, pairs):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "caption": Value("string")})
    dataset = Dataset.from_dict(
        {"image": [image for _, image in pairs], "caption": [c for c, _ in pairs]}, features=features
    )
    dataset.save_to_disk(str(root / "saved"))
    return root / "saved"


def _saved_paths(root, pairs):
    from datasets import Dataset

    write_image_folder(root / "saved_paths_images", pairs, captions="none")
    paths = [str(root / "saved_paths_images" / f"{index:04d}.png") for index in range(len(pairs))]
    Dataset.from_dict({"path": paths, "text": [c for c, _ in pairs]}).save_to_disk(str(root / "saved_paths"))
    return root / "saved_paths"


def _webdataset(root, pairs):
    """Two tars of six samples; even samples caption in .txt, odd ones in .json."""
    os.makedirs(root / "tars", exist_ok=True)
    for shard in range(2):
        with tarfile.open(root / "tars" / f"data-{shard:03d}.tar", "w") as tar:
            for index in range(shard * 6, shard * 6 + 6):
                caption, image = pairs[index]
                text = caption.encode() if index % 2 == 0 else json.dumps({"caption": caption}).encode()
                caption_name = f"{index:06d}.{'txt' if index % 2 == 0 else 'json'}"
                members = {f"{index:06d}.png": png_bytes(image), caption_name: text}
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / "tars" / "data-*.tar")


INPUTS = {
    "folder_txt": (_folder_txt, {}),
    "folder_metadata_jsonl": (_folder_metadata, {}),
    "jsonl_relative_paths": (_jsonl, {}),
    "csv_relative_paths": (_csv, {}),
    "parquet_embedded_bytes": (_parquet_bytes, {}),
    "save_to_disk_image_feature": (_saved_image_feature, {}),
    "save_to_disk_paths": (_saved_paths, {"image_column": "path", "caption_column": "text"}),
    "webdataset_tar_glob": (_webdataset, {}),
}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_every_input_kind_encodes_the_pairs_in_order_to_the_policys_actions(kind, pairs, expected, tmp_path):
    from rlhf_img.upstream.shards import EncodedInfo, open_encoded

    make, keys = INPUTS[kind]
    source = make(tmp_path, pairs)
    summary = encode(source, tmp_path / "out", shard_size=5, **keys)
    dataset = open_encoded(str(tmp_path / "out"))
    assert dataset["caption"] == [caption for caption, _ in pairs]
    np.testing.assert_array_equal(np.array(dataset["actions"]), expected)
    assert set(dataset["height"]) == {32} and set(dataset["width"]) == {32}
    assert len(set(dataset["key"])) == COUNT
    info = EncodedInfo.read(str(tmp_path / "out"))
    assert (info.num_rows, info.num_encoded, info.num_skipped, len(info.shards)) == (COUNT, COUNT, 0, 3)
    assert summary["num_encoded"] == COUNT


def test_folder_keys_are_paths_without_extension_hidden_files_left_out_and_captions_stripped(tmp_path, pairs):
    from rlhf_img.upstream.image_sources import open_source

    write_image_folder(tmp_path / "f" / "sub", pairs[:2])
    (tmp_path / "f" / "sub" / "0000.txt").write_text("  a caption with spaces \n")
    (tmp_path / "f" / "sub" / "._0000.png").write_bytes(b"macOS resource fork")  # hidden: not a row
    os.makedirs(tmp_path / "f" / ".cache")
    pairs[0][1].save(tmp_path / "f" / ".cache" / "x.png")
    rows = list(open_source(str(tmp_path / "f")))
    assert [row.key for row in rows] == ["sub/0000", "sub/0001"]
    assert rows[0].load()[0] == "a caption with spaces"


def _cover_and_crop(image: Image.Image, height: int, width: int) -> np.ndarray:
    """The reference: scale to cover (bicubic, rounded sizes), centre crop."""
    scale = max(height / image.height, width / image.width)
    covering = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.convert("RGB").resize(covering, Image.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return np.array(image.crop((left, top, left + width, top + height)))


def test_fit_image_scales_to_cover_and_centre_crops(tmp_path):
    from rlhf_img.upstream.image_rows import fit_image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (37, 61, 3), dtype=np.uint8))
    image.save(tmp_path / "x.png")
    np.testing.assert_array_equal(fit_image(Image.open(tmp_path / "x.png"), (24, 24)), _cover_and_crop(image, 24, 24))
    np.testing.assert_array_equal(fit_image(image.copy(), (16, 48)), _cover_and_crop(image, 16, 48))
    assert fit_image(image.convert("L"), (8, 8)).shape == (8, 8, 3)  # grey -> RGB
    assert fit_image(image.copy(), (64, 64)).shape == (64, 64, 3)  # smaller than the target: scaled up


def test_fit_image_decodes_large_jpegs_at_a_reduced_scale_with_the_same_content(tmp_path):
    from rlhf_img.upstream.image_rows import fit_image

    ys, xs = np.mgrid[0:480, 0:640]
    smooth = np.stack([xs * 255 // 639, ys * 255 // 479, (xs + ys) * 255 // 1118], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    fitted = fit_image(Image.open(tmp_path / "big.jpg"), (32, 32))
    reference = _cover_and_crop(Image.open(tmp_path / "big.jpg"), 32, 32)  # a full-size decode
    assert fitted.shape == (32, 32, 3)
    assert np.abs(fitted.astype(int) - reference.astype(int)).mean() < 2.0


def test_a_photo_stored_sideways_is_turned_upright_by_its_exif_orientation(tmp_path):
    from rlhf_img.upstream.image_rows import SourceRow, fit_image, prepare_row

    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high; the left half white
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[274] = 6  # Orientation: rotate 90 degrees clockwise to display (a portrait photo from a phone)
    Image.fromarray(stored).save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    row = SourceRow("sideways", lambda: ("a photo", Image.open(tmp_path / "sideways.jpg")))
    prepared = prepare_row(row, (16, 16))
    assert (prepared.height, prepared.width) == (40, 20)  # as displayed
    upright = Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270)  # white on top
    expected = fit_image(upright, (16, 16)).astype(int)
    assert np.abs(prepared.pixels.astype(int) - expected).mean() < 8
    assert prepared.pixels[:4].mean() > 200 and prepared.pixels[-4:].mean() < 50
