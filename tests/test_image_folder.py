"""Image folders: layouts, splits, decoding (exact pixels, scale + centre crop, colours),
bad folders and files, and `fastcnn train/evaluate --data folder` end to end."""
import json

import numpy as np
import pytest

from fastcnn import cli, datasets

Image = pytest.importorskip("PIL.Image")

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(path, size=(40, 30), color=RED, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def digit_folder(root, per_class=6, classes=3):
    """Real MNIST digits from the bundled sample as PNGs: root/<digit>/<i>.png; returns the images."""
    (x, y), _ = datasets.load_mnist_sample()
    written = {}
    for digit in range(classes):
        for i, image in enumerate(x[y == digit][:per_class]):
            path = root / str(digit) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(path)
            written[path] = image
    return written


def test_png_digits_decode_to_their_exact_pixels(tmp_path):
    written = digit_folder(tmp_path)
    paths = sorted(written)
    x = datasets.read_images(paths, (28, 28), "grayscale")
    assert x.dtype == np.uint8 and x.shape == (len(paths), 28, 28, 1)
    np.testing.assert_array_equal(x[..., 0], np.stack([written[p] for p in paths]))
    rgb = datasets.read_images(paths[:2], (28, 28), "rgb")  # grey to RGB: three equal channels
    assert rgb.shape == (2, 28, 28, 3)
    np.testing.assert_array_equal(rgb[..., 1], x[:2, ..., 0])
    np.testing.assert_array_equal(rgb[..., 2], x[:2, ..., 0])


def test_shorter_side_scaled_then_centre_cropped(tmp_path):
    # 90x30: red | green | blue thirds. The centre square is green, at any output size;
    # Pillow's filter reaches one output pixel past the crop: the outer columns blend a
    # little red (left) and blue (right), evenly: the crop is centred.
    image = Image.new("RGB", (90, 30), RED)
    image.paste(Image.new("RGB", (30, 30), GREEN), (30, 0))
    image.paste(Image.new("RGB", (30, 30), BLUE), (60, 0))
    image.save(tmp_path / "wide.png")
    for size in (10, 45):
        x = datasets.read_images([tmp_path / "wide.png"], (size, size))[0].astype(int)
        assert x.shape == (size, size, 3)
        assert (x[:, 1:-1] == GREEN).all()
        left, right = x[:, 0], x[:, -1]
        assert (left[:, 1] > 200).all() and (left[:, 2] == 0).all() and (right[:, 0] == 0).all()
        np.testing.assert_array_equal(left[:, 0], right[:, 2])


def test_jpeg_grayscale_and_rgb(tmp_path):
    path = solid(tmp_path / "a.jpg", (300, 200), (200, 100, 50))
    rgb = datasets.read_images([path], (227, 227))
    assert rgb.shape == (1, 227, 227, 3)
    assert np.abs(rgb.astype(int) - (200, 100, 50)).max() <= 3   # JPEG is lossy
    grey = datasets.read_images([path], (28, 28), "grayscale")
    expected = (200 * 299 + 100 * 587 + 50 * 114) / 1000           # ITU-R 601-2 luma, as Pillow
    assert grey.shape == (1, 28, 28, 1) and abs(grey.mean() - expected) <= 3


def test_one_level_folder_is_split_by_seed(tmp_path):
    digit_folder(tmp_path, per_class=10, classes=3)
    (tmp_path / "2" / "notes.txt").write_text("not an image")
    solid(tmp_path / "1" / ".hidden.png")
    (x, y), (xe, ye), names = datasets.load_image_folder(tmp_path, (28, 28), "grayscale", validation=0.2)
    assert names == ["0", "1", "2"]
    assert len(x) == 24 and len(xe) == 6 and x.shape[1:] == (28, 28, 1)
    assert sorted(np.bincount(np.concatenate([y, ye]))) == [10, 10, 10]
    again = datasets.image_folder(tmp_path, validation=0.2, seed=0)
    other = datasets.image_folder(tmp_path, validation=0.2, seed=1)
    assert again.eval == datasets.image_folder(tmp_path, validation=0.2, seed=0).eval
    assert {p for p, _ in again.eval} != {p for p, _ in other.eval}
    assert set(again.train).isdisjoint(again.eval)
    assert "seed 0" in again.eval_name
    everything = datasets.image_folder(tmp_path, validation=0.0)
    assert len(everything.train) == 30 and everything.eval == []


def test_train_and_val_folders(tmp_path):
    for c in ("cat", "dog", "owl"):
        for i in range(3):
            solid(tmp_path / "train" / c / f"{i}.png")
    solid(tmp_path / "val" / "dog" / "0.png", color=BLUE)
    solid(tmp_path / "val" / "owl" / "sub" / "1.bmp", color=GREEN)   # images in sub-folders count
    folder = datasets.image_folder(tmp_path)
    assert folder.class_names == ("cat", "dog", "owl")
    assert len(folder.train) == 9
    assert sorted(label for _, label in folder.eval) == [1, 2]       # labels of the training classes
    assert str(tmp_path / "val") in folder.eval_name
    (x, y), (xe, ye), names = datasets.load_image_folder(tmp_path, (8, 8))
    assert names == ["cat", "dog", "owl"] and x.shape == (9, 8, 8, 3)
    blue = xe[list(ye).index(1)]
    assert (blue == np.array(BLUE, np.uint8)).all()


def test_a_symbolic_link_loop_is_walked_once(tmp_path):
    solid(tmp_path / "a" / "1.png")
    solid(tmp_path / "a" / "sub" / "2.png")
    solid(tmp_path / "b" / "3.png")
    (tmp_path / "a" / "sub" / "up").symlink_to(tmp_path / "a", target_is_directory=True)
    folder = datasets.image_folder(tmp_path, validation=0.0)
    assert sorted(p.name for p, _ in folder.train) == ["1.png", "2.png", "3.png"]


def test_bad_folders_name_the_problem(tmp_path):
    with pytest.raises(datasets.DataNotFound, match="no such image folder"):
        datasets.image_folder(tmp_path / "absent")
    with pytest.raises(datasets.ImageFolderError, match="no class folders"):
        datasets.image_folder(tmp_path)
    solid(tmp_path / "a" / "1.png")
    solid(tmp_path / "a" / "2.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("")
    with pytest.raises(datasets.ImageFolderError, match=r"b: no images in this class folder"):
        datasets.image_folder(tmp_path)
    (tmp_path / "b" / "readme.txt").unlink()
    (tmp_path / "b").rmdir()
    with pytest.raises(datasets.ImageFolderError, match="cannot be split"):
        datasets.image_folder(tmp_path, validation=0.1)              # 2 images: 0 held out
    with pytest.raises(ValueError, match="held-out fraction"):
        datasets.image_folder(tmp_path, validation=1.0)


def test_val_class_not_in_train_is_refused(tmp_path):
    solid(tmp_path / "train" / "cat" / "0.png")
    solid(tmp_path / "val" / "cow" / "0.png")
    with pytest.raises(datasets.ImageFolderError, match=r"\['cow'\] are not among the training classes"):
        datasets.image_folder(tmp_path)


def test_corrupt_and_truncated_images_name_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(datasets.ImageFolderError, match=r"bad.jpg: cannot decode"):
        datasets.read_images([solid(tmp_path / "ok.png"), bad], (8, 8))
    good = solid(tmp_path / "big.jpg", (300, 300))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:400])
    with pytest.raises(datasets.ImageFolderError, match=r"cut.jpg: cannot decode"):
        datasets.read_images([cut], (8, 8))


def test_ten_crops_are_the_corners_the_centre_and_their_mirror_images():
    x = np.arange(2 * 6 * 7 * 1, dtype=np.float32).reshape(2, 6, 7, 1)
    crops = list(datasets.ten_crops(x, 4, 5))
    assert len(crops) == 10 and all(c.shape == (2, 4, 5, 1) and c.flags.c_contiguous for c in crops)
    np.testing.assert_array_equal(crops[0], x[:, :4, :5])          # top left
    np.testing.assert_array_equal(crops[3], x[:, 2:, 2:])          # bottom right
    np.testing.assert_array_equal(crops[4], x[:, 1:5, 1:6])        # centre
    for plain, mirrored in zip(crops[:5], crops[5:]):
        np.testing.assert_array_equal(mirrored, plain[:, :, ::-1])
    with pytest.raises(ValueError, match="at least 7x5"):
        next(datasets.ten_crops(x, 7, 5))


def test_read_images_progress_bar(tmp_path, capsys):
    paths = [solid(tmp_path / f"{i}.png") for i in range(3)]
    x = datasets.read_images(paths, (8, 8), progress=True)
    assert x.shape == (3, 8, 8, 3) and "decoding" in capsys.readouterr().err


def test_read_images_arguments(tmp_path):
    path = solid(tmp_path / "a.png")
    with pytest.raises(ValueError, match="color_mode='cmyk'"):
        datasets.read_images([path], (8, 8), "cmyk")
    for bad in ((0, 8), (227,), 227, (8.5, 8)):
        with pytest.raises(ValueError, match=r"expected \(height, width\), two ints >= 1"):
            datasets.read_images([path], bad)
    with pytest.raises(TypeError, match="a list of image files, got one path"):
        datasets.read_images(str(path), (8, 8))
    assert datasets.read_images([], (8, 8)).shape == (0, 8, 8, 3)


def test_without_pillow_the_message_says_what_to_install(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(ImportError, match="pip install pillow"):
        datasets.read_images([tmp_path / "a.png"], (8, 8))


# ---------------------------------------------------------------------------- batch by batch
def test_image_folder_batches_decode_each_batch_in_order(tmp_path):
    written = digit_folder(tmp_path, per_class=5, classes=3)
    folder = datasets.image_folder(tmp_path, validation=0.0)
    batches = datasets.ImageFolderBatches(folder.train, 4, (28, 28), "grayscale", num_classes=3, shuffle=False)
    assert len(batches) == 4 and batches.samples == 15
    xs, ys = zip(*(batches[i] for i in range(len(batches))))
    assert [len(x) for x in xs] == [4, 4, 4, 3] and xs[0].dtype == np.float32 and ys[0].shape == (4, 3)
    expected = np.stack([written[path] for path, _ in folder.train])[..., None] / np.float32(255)
    np.testing.assert_array_equal(np.concatenate(xs), expected.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate(ys).argmax(1), [label for _, label in folder.train])
    with pytest.raises(IndexError):
        batches[4]
    shuffled = datasets.ImageFolderBatches(folder.train, 15, (28, 28), "grayscale", seed=3)
    first = shuffled[0][1]
    shuffled.on_epoch_end()
    second = shuffled[0][1]
    assert sorted(first) == sorted(second) == sorted(label for _, label in folder.train)
    assert not np.array_equal(first, second)          # a new order every epoch
    shuffled.close()
    batches.close()


def test_fit_evaluate_predict_on_batches_equal_the_arrays(tmp_path, monkeypatch):
    import fastcnn
    digit_folder(tmp_path, per_class=6, classes=3)
    folder = datasets.image_folder(tmp_path, validation=0.0)
    x = datasets.prepare_images(datasets.read_images([p for p, _ in folder.train], (28, 28), "grayscale"))
    y = datasets.to_categorical([label for _, label in folder.train], 3)
    models = []
    for _ in range(2):
        fastcnn.manual_seed(1)
        model = fastcnn.models.lenet5(num_classes=3)
        model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
        models.append(model)
    source = datasets.ImageFolderBatches(folder.train, 5, (28, 28), "grayscale", num_classes=3, shuffle=False)
    h_arrays = models[0].fit(x, y, epochs=2, batch_size=5, shuffle=False, verbose=0, validation_data=(x, y)).history
    h_source = models[1].fit(source, epochs=2, verbose=0, validation_data=source).history
    assert h_arrays == h_source
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert models[1].evaluate(source, verbose=0) == models[0].evaluate(x, y, batch_size=5, verbose=0)
    np.testing.assert_array_equal(models[1].predict(source), models[0].predict(x, batch_size=5))
    with pytest.raises(ValueError, match="leave y and validation_split out"):
        models[1].fit(source, y)
    source.close()


# ---------------------------------------------------------------------------- the command
def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_and_evaluate_lenet5_on_a_folder(capsys, tmp_path):
    data = tmp_path / "digits"
    digit_folder(data, per_class=10, classes=3)
    out = tmp_path / "run"
    code, text, err = run(capsys, "train", "lenet5", "--data", "folder", "--data-dir", data, "--epochs", "2",
                          "--batch-size", "8", "--device", "cpu", "--verbose", "2", "--out", out)
    assert code == 0, err
    assert "decoding 30 images" in text and "24 training images; evaluation on 6 images" in text
    history = json.loads((out / "history.json").read_text())
    assert history["classes"] == ["0", "1", "2"] and history["data"] == "folder"
    assert len(history["history"]["loss"]) == 2
    code, text, err = run(capsys, "evaluate", "lenet5", "--data", "folder", "--data-dir", data,
                          "--weights", out / "weights.npz", "--device", "cpu")
    assert code == 0, err
    assert "decoding 6 images" in text                                 # only the held-out part
    assert f"{history['validation_accuracy']:.4f}" in text
    assert "classes: 0 0, 1 1, 2 2" in text and "true\\pred" in text

    # predict: the top classes of image files, named as history.json beside the weights says
    images = sorted(data.glob("*/0.png"))                      # the first digit of each class
    code, text, err = run(capsys, "predict", "lenet5", *images, "--weights", out / "weights.npz",
                          "--device", "cpu", "--top", "2")
    assert code == 0, err
    lines = [line for line in text.splitlines() if line.startswith(str(data))]
    assert len(lines) == 3 and "3 classes" in text
    for line in lines:
        first, second = line.split(": ", 1)[1].split(", ")
        assert first.split()[0] in ("0", "1", "2") and float(first.split()[1]) >= float(second.split()[1])
    renamed = json.loads((out / "history.json").read_text())
    renamed["classes"] = ["zero", "one", "two"]
    (out / "history.json").write_text(json.dumps(renamed))
    code, text, _ = run(capsys, "predict", "lenet5", images[0], "--weights", out / "weights.npz", "--device", "cpu")
    assert code == 0 and any(name in text for name in ("zero", "one", "two"))
    (out / "history.json").unlink()                             # no history: class indices
    code, text, _ = run(capsys, "predict", "lenet5", images[0], "--weights", out / "weights.npz", "--device", "cpu")
    assert code == 0 and "zero" not in text
    code, _, err = run(capsys, "predict", "lenet5", images[0], "--weights", out / "none.npz", "--device", "cpu")
    assert code == 2 and "weights file not found" in err
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "predict", "lenet5", images[0], "--weights", out / "weights.npz", "--top", "0")
    assert exit_.value.code == 2 and "argument --top: must be >= 1" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"no png")
    code, _, err = run(capsys, "predict", "lenet5", tmp_path / "bad.png", "--weights", out / "weights.npz",
                       "--device", "cpu")
    assert code == 1 and "bad.png: cannot decode" in err


def test_train_alexnet_on_a_folder(capsys, tmp_path):
    for c, color in (("red", RED), ("blue", BLUE)):
        for i in range(3):
            solid(tmp_path / "data" / "train" / c / f"{i}.jpg", (260 + i, 240), color)
        solid(tmp_path / "data" / "val" / c / "0.jpg", (240, 250), color)
    code, text, err = run(capsys, "train", "alexnet", "--data", "folder", "--data-dir", tmp_path / "data",
                          "--epochs", "1", "--batch-size", "3", "--device", "cpu", "--verbose", "0",
                          "--out", tmp_path / "run")
    assert code == 0, err
    assert "227x227 rgb" in text and "6 training images; evaluation on 2 images" in text
    with np.load(tmp_path / "run" / "weights.npz") as w:
        last = [w[k] for k in w.files][-1]
    assert last.shape == (2,)                     # a 2-class AlexNet: the last bias has 2 entries
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["optimizer"] == "SGD(learning_rate=0.01, momentum=0.9, nesterov=False, weight_decay=0.0005)"
    # --augment: decoded at 256x256, random 227x227 crops and mirror images in training
    code, text, err = run(capsys, "train", "alexnet", "--augment", "--data", "folder", "--data-dir",
                          tmp_path / "data", "--epochs", "1", "--batch-size", "3", "--device", "cpu",
                          "--verbose", "0", "--out", tmp_path / "aug")
    assert code == 0, err
    assert "256x256 rgb" in text
    assert json.loads((tmp_path / "aug" / "history.json").read_text())["augment"] is True
    code, text, err = run(capsys, "evaluate", "alexnet", "--data", "folder", "--data-dir",
                          tmp_path / "data", "--weights", tmp_path / "aug" / "weights.npz", "--device", "cpu")
    assert code == 0, err
    assert "as trained" in text and "--augment" in text    # from the run's history.json
    assert "256x256 rgb" in text and "classes: 0 blue, 1 red" in text
    code, text, err = run(capsys, "evaluate", "alexnet", "--ten-crop", "--data", "folder", "--data-dir",
                          tmp_path / "data", "--weights", tmp_path / "aug" / "weights.npz", "--device", "cpu")
    assert code == 0, err
    assert "validation accuracy" in text and "softmax averaged over 10 crops of each image" in text
    assert "top-5" not in text                        # 2 classes: no top-5 figure


def test_folder_usage_errors(capsys, tmp_path):
    code, _, err = run(capsys, "train", "lenet5", "--data", "folder", "--device", "cpu")
    assert code == 2 and "--data folder needs --data-dir" in err
    code, _, err = run(capsys, "train", "lenet5", "--data", "folder", "--data-dir", tmp_path / "none",
                       "--device", "cpu")
    assert code == 1 and "no such image folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "train", "lenet5", "--data", "folder", "--data-dir", tmp_path / "empty",
                       "--device", "cpu")
    assert code == 1 and "no class folders" in err
    code, _, err = run(capsys, "train", "alexnet", "--data", "mnist-sample", "--device", "cpu")
    assert code == 2 and "--data folder" in err
    code, _, err = run(capsys, "train", "lenet5", "--data-dir", tmp_path, "--device", "cpu")
    assert code == 2 and "--data-dir applies to" in err
    code, _, err = run(capsys, "train", "lenet5", "--augment", "--device", "cpu")
    assert code == 2 and "--augment applies to alexnet only" in err
    code, _, err = run(capsys, "evaluate", "lenet5", "--ten-crop", "--weights", tmp_path / "w.npz", "--device", "cpu")
    assert code == 2 and "--ten-crop takes the paper's ten 227x227 patches" in err


def test_a_test_folder_is_reported_as_test(capsys, tmp_path):
    digit_folder(tmp_path / "train", per_class=4, classes=2)
    digit_folder(tmp_path / "test", per_class=2, classes=2)
    code, text, err = run(capsys, "train", "lenet5", "--data", "folder", "--data-dir", tmp_path, "--epochs", "1",
                          "--device", "cpu", "--verbose", "0", "--out", tmp_path / "run")
    assert code == 0, err
    assert "test accuracy" in text and "8 training images; evaluation on 4 images" in text
    assert "test_accuracy" in json.loads((tmp_path / "run" / "history.json").read_text())


def test_train_and_evaluate_streaming_a_folder(capsys, tmp_path):
    digit_folder(tmp_path / "train", per_class=6, classes=3)
    digit_folder(tmp_path / "val", per_class=3, classes=3)
    common = ("--data", "folder", "--data-dir", tmp_path, "--device", "cpu")
    code, text, err = run(capsys, "train", "lenet5", *common, "--stream", "--epochs", "2", "--batch-size", "4",
                          "--verbose", "2", "--out", tmp_path / "run")
    assert code == 0, err
    assert "streaming 27 images" in text and "18 training images; evaluation on 9 images" in text
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["history"]["val_accuracy"]) == 2 and history["train_images"] == 18
    weights = tmp_path / "run" / "weights.npz"
    reports = []
    for stream in ((), ("--stream",)):      # the same images and weights: the same figures either way
        code, text, err = run(capsys, "evaluate", "lenet5", *common, *stream, "--weights", weights)
        assert code == 0, err
        reports.append([line for line in text.splitlines() if "accuracy" in line or line.strip()[:1].isdigit()])
    assert reports[0] == reports[1]
    code, _, err = run(capsys, "train", "lenet5", "--stream", "--device", "cpu")
    assert code == 2 and "--stream applies to --data folder" in err


def test_16_bit_and_float_images_are_scaled_by_their_range(tmp_path):
    ramp = np.linspace(0, 1, 28 * 28).reshape(28, 28)
    Image.fromarray(np.rint(ramp * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "float.tif")
    Image.fromarray(np.rint(ramp * 65535).astype(np.int32)).save(tmp_path / "int32.tif")
    expected = np.rint(ramp * 255)
    for name in ("deep.png", "float.tif", "int32.tif"):
        for mode, channels in (("grayscale", 1), ("rgb", 3)):
            x = datasets.read_images([tmp_path / name], (28, 28), mode)
            assert x.shape == (1, 28, 28, channels)
            np.testing.assert_allclose(x[0, :, :, 0], expected, atol=1, err_msg=name)  # not clipped at 255, not 0
            assert (x == 255).mean() < 0.01
    Image.fromarray((ramp * 7).astype(np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(datasets.ImageFolderError, match=r"hdr.tif: a floating-point image with values in "
                                                        r"\[0, 7\], outside \[0, 1\]"):
        datasets.read_images([tmp_path / "hdr.tif"], (28, 28), "grayscale")


def test_a_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    solid(tmp_path / "big.png", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is then more than twice the limit
    with pytest.raises(datasets.ImageFolderError, match=r"big.png: refused: .*decompression bomb.*MAX_IMAGE_PIXELS"):
        datasets.read_images([tmp_path / "big.png"], (28, 28))


def test_skipped_files_are_counted_and_said(tmp_path, capsys):
    data = tmp_path / "data"
    digit_folder(data, per_class=5, classes=2)
    (data / "0" / "notes.txt").write_text("x")
    (data / "1" / ".DS_Store").write_bytes(b"")
    solid(data / "stray.png")
    folder = datasets.image_folder(data)
    assert folder.found() == (f"found 10 images in 2 classes in {data}; skipped 1 image outside the class "
                              f"folders (e.g. {data / 'stray.png'}), 2 files that are not images "
                              f"(e.g. {data / '0' / 'notes.txt'})")
    code, text, err = run(capsys, "train", "lenet5", "--data", "folder", "--data-dir", data, "--epochs", "1",
                          "--device", "cpu", "--verbose", "0", "--out", tmp_path / "run")
    assert code == 0, err
    assert "found 10 images in 2 classes" in text and "2 files that are not images" in text


def test_a_link_out_of_a_class_folder_does_not_relabel_images(tmp_path):
    solid(tmp_path / "cat" / "1.png")
    solid(tmp_path / "dog" / "2.png")
    solid(tmp_path / "dog" / "3.png")
    (tmp_path / "cat" / "up").symlink_to(tmp_path, target_is_directory=True)          # the parent
    (tmp_path / "cat" / "dogs").symlink_to(tmp_path / "dog", target_is_directory=True)  # another class
    (tmp_path / "cat" / "4.png").symlink_to(tmp_path / "dog" / "2.png")                # another class's image
    outside = solid(tmp_path.parent / f"{tmp_path.name}-more" / "5.png")
    (tmp_path / "cat" / "more").symlink_to(outside.parent, target_is_directory=True)   # outside the data: fine
    folder = datasets.image_folder(tmp_path, validation=0.0)
    labels = {p.name: folder.class_names[label] for p, label in folder.train}
    assert labels == {"1.png": "cat", "5.png": "cat", "2.png": "dog", "3.png": "dog"}
    assert sorted(p.name for p, why in folder.skipped) == ["4.png", "dogs", "up"]
    assert "3 links out of their class folder (not followed)" in folder.found()
