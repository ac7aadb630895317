"""Data sets: an IDX reader, MNIST, Fashion-MNIST, the bundled MNIST sample, image folders,
synthetic images.

Every MNIST-style loader returns ``(x_train, y_train), (x_test, y_test)`` as Keras's ``load_data()``
does: uint8 images (N, 28, 28) and uint8 integer labels.  ``prepare_images`` turns
them into the float32 NHWC batches in [0, 1] that the models take, ``to_categorical``
turns labels into one-hot rows.

Where the files are looked for (first hit wins; a directory holds the four official
files, gzipped or not, under their official names):

  1. ``path`` when given (and nothing else: a download goes there too);
  2. the cache directory: ``$FASTCNN_DATA/<name>`` if set, else
     ``$XDG_CACHE_HOME/fastcnn/<name>`` or ``~/.cache/fastcnn/<name>``;
  3. for Fashion-MNIST, Debian's ``dataset-fashion-mnist`` files in
     /usr/share/datasets/fashion-mnist;
  4. a download from the public mirrors into the cache directory (unless
     ``download=False`` or ``FASTCNN_NO_DOWNLOAD=1``).

Every file is checked against the SHA-256 of its *decompressed* IDX bytes, not of the
.gz: Debian (and some mirrors) recompress the same data, which changes the gzip
header but not the content.  A file with the wrong digest (say Fashion-MNIST files
left in the MNIST directory, which share the format) is refused, never used.

Image folders (``load_image_folder``: your own photos, ImageNet-style class folders)
are decoded with Pillow into uint8 NHWC arrays of the size a model takes.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcnn._paths import DATA_DIR

__all__ = [
    "IDXFormatError", "ChecksumMismatch", "DataNotFound",
    "read_idx", "load_mnist", "load_fashion_mnist", "load_mnist_sample",
    "ImageFolderError", "ImageFolder", "image_folder", "read_images", "try_read_images", "load_image_folder",
    "ImageFolderBatches", "ten_crops", "rgb_pca",
    "synthetic", "to_categorical", "prepare_images", "cache_dir",
]


class IDXFormatError(ValueError):
    """An IDX file is truncated, corrupt, or not the array it should be."""


class ChecksumMismatch(ValueError):
    """A data file's SHA-256 differs from the published one."""


class DataNotFound(FileNotFoundError):
    """The data files are absent and could not be downloaded; the message says what to fetch."""


# ---------------------------------------------------------------------------- IDX
# The IDX format (LeCun's MNIST page): two zero bytes, a type code, the number of
# dimensions, then one big-endian uint32 per dimension, then the data, big-endian.
_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is a gzip file (found by its magic, not its name)."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise IDXFormatError(f"{path}: the gzip stream is truncated ({len(raw)} bytes read): "
                             f"the file is incomplete, delete it and fetch it again") from exc
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; CRC errors too
        raise IDXFormatError(f"{path}: corrupt gzip data ({exc}); delete it and fetch it again") from exc


def _parse_idx(data: bytes, where: str) -> np.ndarray:
    if len(data) < 4:
        raise IDXFormatError(f"{where}: {len(data)} bytes is too short for an IDX header (4 bytes + dims)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise IDXFormatError(f"{where}: wrong magic number 0x{data[:4].hex()}: not an IDX file "
                             f"(expected 0x0000 then a type code in "
                             f"{', '.join(f'0x{t:02x}' for t in _IDX_TYPES)}, e.g. 0x00000803 for images)")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{where}: truncated header: {ndim} dimensions need {header} bytes, "
                             f"the file has {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < expected:
        raise IDXFormatError(f"{where}: truncated: shape {shape} of {dtype.name} needs {expected} bytes, "
                             f"the file has {len(data)}")
    if len(data) > expected:
        raise IDXFormatError(f"{where}: {len(data) - expected} unexpected bytes after the data "
                             f"(shape {shape} needs {expected} bytes): corrupt or not this array")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def read_idx(path) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a NumPy array, checking magic, dimensions and size."""
    path = Path(path)
    return _parse_idx(_read_bytes(path), str(path))


# ---------------------------------------------------------------------------- file sets
class _DataSet:
    """The four files of an MNIST-style data set, their digests and their mirrors."""

    def __init__(self, name, title, files, mirrors, system_dirs=()):
        self.name = name            # cache sub-directory
        self.title = title
        self.files = files          # {role: (official file name without .gz, sha256 of the IDX bytes, shape)}
        self.mirrors = mirrors      # base URLs, tried in order
        self.system_dirs = system_dirs


# SHA-256 of the decompressed IDX files.  MNIST: the official files' content, as
# published beside the .gz digests (440fcabf... for train-images-idx3-ubyte.gz) by
# several projects; Fashion-MNIST: measured here on Debian's files, which match the
# upstream .gz (md5 8d4fb7e6... etc.) once decompressed.
MNIST = _DataSet(
    "mnist", "MNIST",
    {"x_train": ("train-images-idx3-ubyte",
                 "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", (60000, 28, 28)),
     "y_train": ("train-labels-idx1-ubyte",
                 "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", (60000,)),
     "x_test": ("t10k-images-idx3-ubyte",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", (10000, 28, 28)),
     "y_test": ("t10k-labels-idx1-ubyte",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", (10000,))},
    ["https://ossci-datasets.s3.amazonaws.com/mnist/",
     "https://storage.googleapis.com/cvdf-datasets/mnist/"],
)

FASHION_MNIST = _DataSet(
    "fashion-mnist", "Fashion-MNIST",
    {"x_train": ("train-images-idx3-ubyte",
                 "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", (60000, 28, 28)),
     "y_train": ("train-labels-idx1-ubyte",
                 "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", (60000,)),
     "x_test": ("t10k-images-idx3-ubyte",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", (10000, 28, 28)),
     "y_test": ("t10k-labels-idx1-ubyte",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", (10000,))},
    ["https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
     "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
)

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def cache_dir(name: str = "") -> Path:
    """Where downloads go: $FASTCNN_DATA, else $XDG_CACHE_HOME/fastcnn, else ~/.cache/fastcnn."""
    if os.environ.get("FASTCNN_DATA"):
        root = Path(os.environ["FASTCNN_DATA"]).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fastcnn"
    return root / name if name else root


def _find(directory: Path, filename: str) -> Path | None:
    for candidate in (directory / (filename + ".gz"), directory / filename):
        if candidate.is_file():
            return candidate
    return None


def _check_file(path: Path, digest: str, shape) -> np.ndarray:
    """Read one IDX file, check its content digest and its shape."""
    data = _read_bytes(path)
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ChecksumMismatch(f"{path}: SHA-256 of the IDX content is {actual}, expected {digest}: "
                               f"the file is corrupt or a different data set; delete it and fetch it again")
    array = _parse_idx(data, str(path))
    if array.shape != shape or array.dtype != np.uint8:
        raise IDXFormatError(f"{path}: holds {array.dtype} {array.shape}, expected uint8 {shape}")
    return array


def _download(url: str, target: Path, digest: str, timeout: float = 60.0) -> None:
    """Fetch url into target atomically: a temporary file in the same directory, checked, then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        actual = hashlib.sha256(_read_bytes(tmp)).hexdigest()
        if actual != digest:
            raise ChecksumMismatch(f"{url}: SHA-256 of the downloaded IDX content is {actual}, "
                                   f"expected {digest}; the file was not kept")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; a shared cache wants the usual mode
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _missing_message(ds: _DataSet, directory: Path, missing, errors, searched_system: bool) -> str:
    lines = [f"{ds.title} data not found: missing {', '.join(f + '.gz' for f in missing)} in {directory}."]
    if ds.system_dirs and searched_system:
        lines.append("Also looked in " + ", ".join(str(d) for d in ds.system_dirs)
                     + (" (Debian: apt-get install dataset-fashion-mnist)" if ds is FASHION_MNIST else ""))
    if errors:
        lines.append("Download failed:")
        lines += [f"  {e}" for e in errors]
    else:
        lines.append("Downloading is off (download=False or FASTCNN_NO_DOWNLOAD=1).")
    lines.append(f"Download these files from any of the mirrors and put them in {directory} "
                 f"(or point FASTCNN_DATA at a directory holding a '{ds.name}' folder with them):")
    for filename in missing:
        lines += [f"  {base}{filename}.gz" for base in ds.mirrors]
    return "\n".join(lines)


def _load(ds: _DataSet, path=None, download=True):
    if download and os.environ.get("FASTCNN_NO_DOWNLOAD", "") not in ("", "0"):
        download = False
    target = Path(path).expanduser() if path is not None else cache_dir(ds.name)
    search = [target] if path is not None else [target, *ds.system_dirs]

    arrays = {}
    missing = []
    for role, (filename, digest, shape) in ds.files.items():
        found = next((p for d in search if (p := _find(d, filename)) is not None), None)
        if found is None:
            missing.append(role)
        else:
            arrays[role] = _check_file(found, digest, shape)

    errors = []
    if missing and download:
        for role in list(missing):
            filename, digest, shape = ds.files[role]
            dest = target / (filename + ".gz")
            for base in ds.mirrors:
                url = base + filename + ".gz"
                print(f"fastcnn: downloading {url} -> {dest}", file=sys.stderr)
                try:
                    _download(url, dest, digest)
                except (OSError, urllib.error.URLError, ValueError) as exc:
                    errors.append(f"{url}: {exc}")
                    continue
                arrays[role] = _check_file(dest, digest, shape)
                missing.remove(role)
                break
    if missing:
        raise DataNotFound(_missing_message(ds, target, [ds.files[r][0] for r in missing], errors,
                                            searched_system=path is None))

    for split in ("train", "test"):
        if len(arrays["x_" + split]) != len(arrays["y_" + split]):  # only reachable with edited digests
            raise IDXFormatError(f"{ds.title}: {len(arrays['x_' + split])} {split} images "
                                 f"but {len(arrays['y_' + split])} labels")
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def load_mnist(path=None, download=True):
    """MNIST: 60,000 training and 10,000 test digits, ``(x_train, y_train), (x_test, y_test)``."""
    return _load(MNIST, path, download)


def load_fashion_mnist(path=None, download=True):
    """Fashion-MNIST (Zalando): 60,000 + 10,000 clothing images, classes in ``FASHION_CLASSES``."""
    return _load(FASHION_MNIST, path, download)


# ---------------------------------------------------------------------------- bundled sample
SAMPLE_FILE = DATA_DIR / "mnist-10k.npz"


def load_mnist_sample(validation: int = 2000, seed: int = 0):
    """The 10,000 real MNIST digits shipped with fastcnn, split at random with a fixed seed.

    Returns ``(x_train, y_train), (x_val, y_val)``: 8,000 / 2,000 by default.  This is a
    subset of MNIST (see fastcnn/data/ATTRIBUTION.md), not its official test set.
    """
    if not SAMPLE_FILE.is_file():
        raise DataNotFound(f"the bundled MNIST sample {SAMPLE_FILE} is missing from this installation; "
                           f"reinstall fastcnn (it ships as package data)")
    with np.load(SAMPLE_FILE) as npz:
        images, labels = npz["images"], npz["labels"]
    if not 0 <= validation <= len(images):
        raise ValueError(f"validation={validation}: must be between 0 and {len(images)}")
    # The file is sorted by digit: shuffle before splitting so that both parts hold every class.
    order = np.random.default_rng(seed).permutation(len(images))
    val, train = order[:validation], order[validation:]
    return (images[train], labels[train]), (images[val], labels[val])


# ---------------------------------------------------------------------------- image folders
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")
EVAL_FOLDER_NAMES = ("val", "validation", "test")
COLOR_MODES = {"rgb": ("RGB", 3), "grayscale": ("L", 1)}


class ImageFolderError(ValueError):
    """An image folder has no classes or no images, or an image cannot be decoded."""


@dataclass(frozen=True)
class ImageFolder:
    """The files of an image folder, split for training and evaluation (nothing decoded yet).

    ``train`` and ``eval`` are lists of ``(path, label)``, each shuffled with the seed (so
    that the first N of either holds every class); ``class_names[label]`` is the folder name.
    ``skipped``: ``(path, why)`` of the files left out (not images, outside the class folders,
    links leading out of their class folder); ``found()`` says what was found and skipped.
    """
    root: Path
    class_names: tuple
    train: list
    eval: list
    eval_name: str
    skipped: tuple = ()

    def found(self) -> str:
        """'found 1,204 images in 3 classes; skipped 2 files that are not images (e.g. a.txt)'."""
        n = len(self.train) + len(self.eval)
        text = f"found {n:,} images in {len(self.class_names)} classes in {self.root}"
        kinds: dict = {}
        for path, why in self.skipped:
            kinds.setdefault(why, []).append(path)
        if kinds:
            text += "; skipped " + ", ".join(
                f"{len(paths):,} {SKIPPED[why][len(paths) > 1]} (e.g. {paths[0]})" for why, paths in kinds.items())
        return text


NOT_IMAGE, OUTSIDE, LINK_OUT = "not an image", "outside the class folders", "link out of its class folder"
SKIPPED = {NOT_IMAGE: ("file that is not an image", "files that are not images"),
           OUTSIDE: ("image outside the class folders", "images outside the class folders"),
           LINK_OUT: ("link out of its class folder (not followed)", "links out of their class folder (not followed)")}


def _class_dirs(directory: Path) -> list:
    return sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _image_files(class_dir: Path, skipped: list) -> list:
    """Every image file under class_dir (sub-folders and links included), sorted: the order is
    the same on every machine.  A link that leads to another class's images or up the tree is
    not followed; it and the files that are not images go to ``skipped`` as (path, why)."""
    found, seen = [], set()
    own = os.path.realpath(class_dir)
    classes = os.path.realpath(class_dir.parent)

    def leads_out(path: str) -> bool:  # to this class folder's parent or above, or into another class
        real = os.path.realpath(path)
        return os.path.islink(path) and (real != own and _within(own, real) or
                                         _within(real, classes) and not _within(real, own))

    for root, dirs, files in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link to a folder walked already: each folder once, never a loop
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for d in [d for d in dirs if leads_out(os.path.join(root, d))]:
            dirs.remove(d)
            skipped.append((Path(root) / d, LINK_OUT))
        for f in files:
            path = os.path.join(root, f)
            if f.startswith(".") or not f.lower().endswith(IMAGE_EXTENSIONS):
                skipped.append((Path(path), NOT_IMAGE))
            elif leads_out(path):
                skipped.append((Path(path), LINK_OUT))
            else:
                found.append(Path(path))
    return sorted(found)


def _list_classes(directory: Path, class_names=None, skipped=None) -> tuple[tuple, list]:
    """(class names, [(path, label)]) of directory/<class>/...; with class_names, a subset of those.
    Files left out are added to ``skipped`` as (path, why)."""
    skipped = [] if skipped is None else skipped
    dirs = _class_dirs(directory)
    if not dirs:
        raise ImageFolderError(f"{directory}: no class folders; expected one sub-folder of images per "
                               f"class (e.g. {directory}/cat/1.jpg, {directory}/dog/2.png)")
    skipped += [(f, OUTSIDE) for f in sorted(directory.iterdir())
                if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS)]
    names = tuple(d.name for d in dirs)
    if class_names is not None:
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise ImageFolderError(f"{directory}: classes {unknown} are not among the training classes "
                                   f"{list(class_names)}")
    index = {name: i for i, name in enumerate(class_names if class_names is not None else names)}
    files = []
    for d in dirs:
        images = _image_files(d, skipped)
        if not images:
            raise ImageFolderError(f"{d}: no images in this class folder (looked for "
                                   f"{', '.join(IMAGE_EXTENSIONS)})")
        files += [(path, index[d.name]) for path in images]
    return (class_names if class_names is not None else names), files


def _shuffled(files: list, rng) -> list:
    return [files[i] for i in rng.permutation(len(files))]


def class_roots(directory) -> list[Path]:
    """The folders whose sub-folders are read as classes: ``[train, val]`` (or ``validation`` or
    ``test``) where both are there, else ``[directory]``."""
    root = Path(directory).expanduser()
    eval_dir = next((root / n for n in EVAL_FOLDER_NAMES if (root / n).is_dir()), None)
    return [root / "train", eval_dir] if (root / "train").is_dir() and eval_dir is not None else [root]


def image_folder(directory, validation: float = 0.2, seed: int = 0) -> ImageFolder:
    """Find the images of a folder and split them; nothing is decoded (see ``read_images``).

    Two layouts, as ImageNet's and Keras's:

    * ``directory/train/<class>/...`` beside ``directory/val/<class>/...`` (or ``validation``
      or ``test``): those two sets; the evaluation classes must be training classes;
    * ``directory/<class>/...``: every image, split at random with ``seed``, ``validation``
      of them (a fraction) held out for evaluation.

    Class names are the folder names, sorted; label i is ``class_names[i]``.
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DataNotFound(f"{root}: no such image folder")
    rng = np.random.default_rng(seed)
    roots = class_roots(root)
    skipped = []
    if len(roots) == 2:
        eval_dir = roots[1]
        class_names, train = _list_classes(roots[0], skipped=skipped)
        _, held_out = _list_classes(eval_dir, class_names, skipped)
        return ImageFolder(root, class_names, _shuffled(train, rng), _shuffled(held_out, rng),
                           f"{eval_dir}", tuple(skipped))
    if not 0.0 <= validation < 1.0:
        raise ValueError(f"validation={validation}: the held-out fraction must be in [0, 1)")
    class_names, files = _list_classes(root, skipped=skipped)
    files = _shuffled(files, rng)
    n_eval = int(round(validation * len(files)))
    if validation > 0 and not 0 < n_eval < len(files):
        raise ImageFolderError(f"{root}: {len(files)} image(s) cannot be split {1 - validation:g} / "
                               f"{validation:g} for training and validation; add images or use train/ and val/ folders")
    return ImageFolder(root, class_names, files[n_eval:], files[:n_eval],
                       f"validation: {validation:.0%} of {root}, split with seed {seed}", tuple(skipped))


def _as_8bit(image, path: Path):
    """A 16-bit or 32-bit integer, or float, image as 8-bit grey by its range of values (Pillow's
    own conversion clips 16-bit values at 255 and truncates floats in [0, 1] to 0): integers by the
    16-bit range, floats by [0, 1]; other values are refused, naming the file."""
    from PIL import Image
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    pixels = np.asarray(image, dtype=np.float64)
    top = 1.0 if image.mode == "F" else 65535.0
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if not (0.0 <= low and high <= top):  # NaN fails too
        kind = "a floating-point image" if image.mode == "F" else f"a {image.mode} integer image"
        raise ImageFolderError(f"{path}: {kind} with values in [{low:g}, {high:g}], outside [0, {top:g}]: "
                               f"cannot tell its brightness; convert it to 8 or 16 bits per channel")
    return Image.fromarray(np.rint(pixels * (255.0 / top)).astype(np.uint8), "L")


def _decode(path: Path, size, pil_mode: str) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image.draft(pil_mode, size)  # JPEG: decode at the smallest scale still >= size (much faster)
            image = _as_8bit(ImageOps.exif_transpose(image), path).convert(pil_mode)
            # Scale the shorter side to the target, then keep the centre: AlexNet's preprocessing.
            image = ImageOps.fit(image, size, method=Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except ImageFolderError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageFolderError(f"{path}: refused: {exc} (if the image is genuine, raise "
                               f"PIL.Image.MAX_IMAGE_PIXELS)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageFolderError(f"{path}: cannot decode this image ({exc})") from None


def _decoder(image_size, color_mode):
    """(decode(path) -> uint8 (H, W, C), (H, W, C)) after checking the arguments and Pillow."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ImportError("reading image folders needs Pillow: pip install pillow "
                          "(or pip install 'fastcnn[images]')") from None
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode={color_mode!r}: use one of {sorted(COLOR_MODES)}")
    size = tuple(image_size) if isinstance(image_size, (tuple, list)) else ()
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in size):
        raise ValueError(f"image_size={image_size!r}: expected (height, width), two ints >= 1")
    height, width = (int(v) for v in size)
    pil_mode, channels = COLOR_MODES[color_mode]
    shape = (height, width, channels)
    return (lambda path: _decode(Path(path), (width, height), pil_mode).reshape(shape)), shape


def _workers() -> int:
    return min(8, os.cpu_count() or 1)


def read_images(paths, image_size=(227, 227), color_mode: str = "rgb", progress: bool = False) -> np.ndarray:
    """Decode image files into uint8 ``(N, H, W, C)``: shorter side scaled to fit, centre crop.

    ``image_size`` is (height, width); ``color_mode`` 'rgb' (C = 3) or 'grayscale' (C = 1).
    The files are decoded on several threads (Pillow releases the GIL while decoding);
    ``progress`` shows a bar on stderr (with tqdm installed).
    """
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"paths must be a list of image files, got one path {str(paths)!r}: pass [path]")
    decode, shape = _decoder(image_size, color_mode)
    paths = list(paths)
    out = np.empty((len(paths), *shape), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        decoded = pool.map(decode, paths)
        for i, pixels in enumerate(_progress_bar(decoded, len(paths)) if progress else decoded):
            out[i] = pixels
    return out


def try_read_images(paths, image_size=(227, 227), color_mode: str = "rgb"):
    """``read_images`` that goes on past a file it cannot decode: ``(images, failed)``, the
    decoded files' uint8 ``(N, H, W, C)`` in order and ``{index in paths: message}`` of the others."""
    decode, shape = _decoder(image_size, color_mode)

    def attempt(path):
        try:
            return decode(path), None
        except ImageFolderError as exc:
            return None, str(exc)

    decoded, failed = [], {}
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        for i, (pixels, error) in enumerate(pool.map(attempt, list(paths))):
            if error is None:
                decoded.append(pixels)
            else:
                failed[i] = error
    return (np.stack(decoded) if decoded else np.empty((0, *shape), np.uint8)), failed


class ImageFolderBatches:
    """Image files decoded batch by batch as training asks for them, for folders too large to
    hold in memory: ``fit(ImageFolderBatches(folder.train, 128, ...))``.

    Keras's Sequence protocol: ``len()`` batches; ``[i]`` -> ``(x, y)`` with x float32
    ``(B, H, W, C)`` in [0, 1] and y one-hot float32 rows (with ``num_classes``) or int64
    labels; ``on_epoch_end()`` draws the next epoch's order (``shuffle``; ``get_state()`` and
    ``set_state()`` give and take where its generator stands, for exact resumes).  ``files`` are
    ``(path, label)`` pairs (``image_folder(...).train``).  Decoding runs ahead on a pool of
    threads, ``prefetch`` batches beyond the one asked for.  ``close()`` stops the pool.
    """

    def __init__(self, files, batch_size, image_size=(227, 227), color_mode="rgb", num_classes=None,
                 shuffle=True, seed=0, prefetch=2):
        self.files = list(files)
        if not self.files:
            raise ImageFolderError("ImageFolderBatches: no files")
        from .batches import check_batch_size
        batch_size = check_batch_size(batch_size)  # fit's rule: a positive integer
        self.decode, self.image_shape = _decoder(image_size, color_mode)
        self.batch_size, self.num_classes, self.shuffle = int(batch_size), num_classes, shuffle
        self.samples = len(self.files)
        self.prefetch = max(0, int(prefetch))
        self.rng = np.random.default_rng(seed)
        self._draw()
        self.pool = ThreadPoolExecutor(max_workers=_workers())
        self.pending: dict = {}

    def __len__(self) -> int:
        return -(-self.samples // self.batch_size)

    def _submit(self, i):
        rows = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        return [self.pool.submit(self.decode, self.files[r][0]) for r in rows], rows

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        futures, rows = self.pending.pop(i, None) or self._submit(i)   # first in the pool's queue
        for ahead in range(i + 1, min(i + 1 + self.prefetch, len(self))):
            if ahead not in self.pending:
                self.pending[ahead] = self._submit(ahead)
        x = np.stack([f.result() for f in futures]).astype(np.float32) / np.float32(255.0)
        labels = np.array([self.files[r][1] for r in rows], dtype=np.int64)
        return x, (labels if self.num_classes is None else to_categorical(labels, self.num_classes))

    def _draw(self) -> None:
        self.drawn_from = self.rng.bit_generator.state   # what this order was drawn from
        self.order = self.rng.permutation(self.samples) if self.shuffle else np.arange(self.samples)

    def _cancel(self) -> None:
        for futures, _ in self.pending.values():
            for f in futures:
                f.cancel()
        self.pending = {}

    def on_epoch_end(self) -> None:
        self._cancel()
        if self.shuffle:
            self._draw()

    def get_state(self) -> dict:
        return {"rng": self.drawn_from}

    def set_state(self, state: dict) -> None:
        """The order get_state()'s source had, and its generator where it was."""
        self._cancel()
        self.rng.bit_generator.state = state["rng"]
        self._draw()

    def close(self) -> None:
        self._cancel()
        self.pool.shutdown(wait=True)


def _progress_bar(items, total):
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc="decoding", unit="img", leave=False, file=sys.stderr)


def load_image_folder(directory, image_size=(227, 227), color_mode: str = "rgb",
                      validation: float = 0.2, seed: int = 0):
    """An image folder decoded: ``(x_train, y_train), (x_eval, y_eval), class_names``.

    x: uint8 ``(N, H, W, C)``, y: int64 labels.  Layouts and split: ``image_folder``;
    decoding: ``read_images``.
    """
    folder = image_folder(directory, validation=validation, seed=seed)

    def decoded(files):
        labels = np.array([label for _, label in files], dtype=np.int64)
        return read_images([path for path, _ in files], image_size, color_mode), labels

    return decoded(folder.train), decoded(folder.eval), list(folder.class_names)


def rgb_pca(images, max_pixels: int = 1_000_000, seed: int = 0):
    """(eigenvalues (3,), eigenvectors (3, 3), columns) of the covariance of the RGB values of
    ``images`` (N, H, W, 3), uint8 or float in [0, 1], largest first: what the AlexNet paper's
    colour noise (layers.PCAColorNoise) adds along.  At most ``max_pixels`` random pixels."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[3] != 3 or x.size == 0:
        raise ValueError(f"rgb_pca: expected RGB images (N, H, W, 3), got shape {x.shape}")
    pixels = x.reshape(-1, 3)
    if len(pixels) > max_pixels:
        pixels = pixels[np.random.default_rng(seed).choice(len(pixels), max_pixels, replace=False)]
    pixels = pixels.astype(np.float64) / (255.0 if x.dtype == np.uint8 else 1.0)
    values, vectors = np.linalg.eigh(np.cov(pixels, rowvar=False))
    return values[::-1].copy(), vectors[:, ::-1].copy()


def ten_crops(x, height, width):
    """The AlexNet paper's ten test patches of each image: the four corner and the centre
    height x width crops, then their left-right mirror images.  Yields 10 arrays (N, h, w, C)."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] < height or x.shape[2] < width:
        raise ValueError(f"ten_crops: expected images (N, H, W, C) of at least {height}x{width}, got {x.shape}")
    H, W = x.shape[1:3]
    corners = [(0, 0), (0, W - width), (H - height, 0), (H - height, W - width),
               ((H - height) // 2, (W - width) // 2)]
    for mirrored in (False, True):
        for top, left in corners:
            crop = x[:, top:top + height, left:left + width]
            yield np.ascontiguousarray(crop[:, :, ::-1] if mirrored else crop)


# ---------------------------------------------------------------------------- synthetic
def synthetic(n: int, shape=(28, 28, 1), num_classes: int = 10, seed: int = 0):
    """SYNTHETIC data for throughput work: uniform random uint8 images and random labels.

    Returns ``(x, y)``: x uint8 ``(n, *shape)``, y int64 ``(n,)`` in [0, num_classes).  There
    is nothing to learn here; accuracy on it means nothing, and anything reported from
    it must say that the images are synthetic.
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = rng.integers(0, num_classes, size=n, dtype=np.int64)
    return x, y


# ---------------------------------------------------------------------------- helpers
def to_categorical(y, num_classes: int | None = None) -> np.ndarray:
    """Integer labels -> one-hot float32 rows, like ``keras.utils.to_categorical``."""
    y = np.asarray(y)
    if y.ndim > 1 and y.shape[-1] == 1:  # Keras accepts (N, 1) column vectors
        y = y.reshape(y.shape[:-1])
    if y.size and (not np.issubdtype(y.dtype, np.integer) and not np.all(y == np.round(y))):
        raise ValueError("to_categorical: labels must be integers")
    y = y.astype(np.int64)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"to_categorical: labels span [{y.min()}, {y.max()}], "
                         f"outside [0, {num_classes}) for num_classes={num_classes}")
    out = np.zeros((*y.shape, num_classes), dtype=np.float32)
    np.put_along_axis(out, y[..., None], 1.0, axis=-1)
    return out


def prepare_images(x) -> np.ndarray:
    """Images -> float32 NHWC in [0, 1]: uint8 are divided by 255, (N, H, W) gains a channel axis."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"prepare_images: expected (N, H, W) or (N, H, W, C) images, got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(x, dtype=np.float32)
