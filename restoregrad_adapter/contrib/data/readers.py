"""Paired files in the supported layouts, and conversions between arrays and model tensors.

Every function returns pairs in the library's order ``(x0, y)`` = (clean, degraded): for files,
``(clean_path, degraded_path)``; :func:`read_image_pair` and :func:`read_audio_pair` read such a pair
(single files: :func:`restoregrad_adapter.io.read_image` and :func:`restoregrad_adapter.io.read_audio`).

Image layouts (:func:`image_pair_files`):

- a WeatherDiff/AllWeather file list: a ``.txt`` of degraded image paths, one a line (relative to
  the list's folder); the clean image is the same path with the last folder named ``input`` replaced
  by ``gt``;
- a RealBlur file list (``RealBlur_J_train_list.txt``, ...): a ``.txt`` with two paths a line, the
  ground truth then the blurred image, relative to the list's folder (the dataset's root);
- a RainDrop-style folder with ``input/`` and ``gt/``: the same file name, or ``rain`` -> ``clean``;
- an imagefolder whose ``metadata.jsonl`` rows name the degraded ``file_name`` and the clean image
  in a column (``clean_column``).

Super-resolution: DIV2K's ``DIV2K_train_HR/0001.png`` with ``DIV2K_train_LR_bicubic/X4/0001x4.png``
(:func:`div2k_pair_files`); :func:`read_sr_pair` reads such a pair and up-samples the low-resolution
image bicubically to the high-resolution size, the ``y`` of SR3-style conditional models.

Audio layouts: two folders of files with the same names (:func:`audio_pair_files`), and
VoiceBank+DEMAND (:func:`voicebank_pair_files`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...io import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS

__all__ = [
    "IMAGE_EXTENSIONS",
    "AUDIO_EXTENSIONS",
    "image_pair_files",
    "pairs_from_file_list",
    "pairs_from_realblur_list",
    "pairs_from_input_gt",
    "pairs_from_metadata",
    "DIV2K_SPLITS",
    "DIV2K_TRACKS",
    "div2k_pair_files",
    "read_sr_pair",
    "audio_pair_files",
    "VOICEBANK_FOLDERS",
    "voicebank_pair_files",
    "read_image_pair",
    "read_audio_pair",
    "downscale",
    "image_to_tensor",
    "tensor_to_image",
    "normalize_level",
]


# ---------------------------------------------------------------------- image layouts
def _list_lines(list_file: Path) -> list[tuple[int, str]]:
    """The non-empty lines of a file list as ``(line number, the line without surrounding white space)``."""
    try:
        text = list_file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{list_file}: cannot read the file list ({error})") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _listed_path(list_file: Path, entry: str) -> Path:
    """A path of a file list: absolute, or relative to the list's folder (or, failing that, the working folder)."""
    path = Path(entry) if Path(entry).is_absolute() else (list_file.parent / entry)
    if not path.exists() and Path(entry).exists():
        path = Path(entry)
    return path


def pairs_from_file_list(list_file) -> list[tuple[str, str]]:
    """``(clean, degraded)`` paths of a WeatherDiff/AllWeather list of degraded images (``input`` -> ``gt``)."""
    list_file = Path(list_file)
    pairs = []
    for _, line in _list_lines(list_file):
        degraded = _listed_path(list_file, line)
        parts = list(degraded.parts)
        if "input" not in parts:
            raise ValueError(f"{list_file}: path {line!r} has no folder named 'input' to map to 'gt'")
        index = len(parts) - 1 - parts[::-1].index("input")
        clean = Path(*parts[:index], "gt", *parts[index + 1:])
        pairs.append((str(clean), str(degraded)))
    return pairs


def pairs_from_realblur_list(list_file) -> list[tuple[str, str]]:
    """``(clean, degraded)`` paths of a RealBlur list: each line is a ground-truth path and a blurred path,
    separated by white space, relative to the list's folder, e.g.
    ``RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene230/gt/gt_1.png
    RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene230/blur/blur_1.png``."""
    list_file = Path(list_file)
    pairs = []
    for number, line in _list_lines(list_file):
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{list_file} line {number}: expected a ground-truth path and a blurred path "
                             f"(a RealBlur list), got {len(fields)} field(s)")
        pairs.append((str(_listed_path(list_file, fields[0])), str(_listed_path(list_file, fields[1]))))
    return pairs


def pairs_from_input_gt(folder) -> list[tuple[str, str]]:
    """``(clean, degraded)`` paths of ``gt/NAME`` and ``input/NAME`` (or ``gt/NAME`` with 'rain' -> 'clean')."""
    folder = Path(folder)
    pairs = []
    for degraded in sorted((folder / "input").iterdir()):
        if degraded.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        for name in (degraded.name, degraded.name.replace("rain", "clean")):
            if (folder / "gt" / name).exists():
                pairs.append((str(folder / "gt" / name), str(degraded)))
                break
        else:
            raise ValueError(f"no clean image in {folder / 'gt'} for {degraded.name}")
    return pairs


def pairs_from_metadata(folder, clean_column: str) -> list[tuple[str, str]]:
    """``(clean, degraded)`` paths of an imagefolder: ``metadata.jsonl`` rows with ``file_name`` (degraded)
    and ``clean_column`` (clean), both relative to ``folder``."""
    folder = Path(folder)
    pairs = []
    for number, line in enumerate((folder / "metadata.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "file_name" not in row or clean_column not in row:
            raise ValueError(f"{folder / 'metadata.jsonl'} line {number} needs 'file_name' and '{clean_column}' "
                             "(the clean_column)")
        pairs.append((str(folder / row[clean_column]), str(folder / row["file_name"])))
    return pairs


def image_pair_files(location, clean_column: str = "target") -> list[tuple[str, str]]:
    """``(clean, degraded)`` image paths of a file list, an ``input/`` + ``gt/`` folder or an imagefolder.

    A ``.txt`` list is a RealBlur list when its first line is two paths separated by white space (and
    not one existing path with a space in its name), otherwise a WeatherDiff/AllWeather list. Raises a
    ValueError when ``location`` is none of the layouts, names a missing file or holds no pair.
    """
    path = Path(location)
    if path.is_file() and path.suffix == ".txt":
        lines = _list_lines(path)
        realblur = bool(lines) and len(lines[0][1].split()) == 2 and not _listed_path(path, lines[0][1]).exists()
        pairs = pairs_from_realblur_list(path) if realblur else pairs_from_file_list(path)
    elif (path / "input").is_dir() and (path / "gt").is_dir():
        pairs = pairs_from_input_gt(path)
    elif (path / "metadata.jsonl").is_file():
        pairs = pairs_from_metadata(path, clean_column)
    elif any(path.glob("DIV2K_*_HR")):
        raise ValueError(f"{location} is a DIV2K folder: its pairs differ in size; read them with "
                         "div2k_pair_files and read_sr_pair")
    else:
        raise ValueError(f"{location} is not a .txt file list (WeatherDiff or RealBlur), a folder with input/ and "
                         "gt/, or an imagefolder with metadata.jsonl")
    missing = [p for pair in pairs for p in pair if not Path(p).exists()]
    if missing:
        raise ValueError(f"{len(missing)} listed image(s) do not exist, e.g. {missing[0]}")
    if not pairs:
        raise ValueError(f"no image pairs found in {location}")
    return pairs


# ---------------------------------------------------------------------- super-resolution layouts
#: DIV2K's splits: ``DIV2K_<split>_HR/`` holds the high-resolution images.
DIV2K_SPLITS = ("train", "valid")
#: DIV2K's down-sampling tracks with factors 2, 3 and 4: ``DIV2K_<split>_LR_<track>/X<scale>/``.
DIV2K_TRACKS = ("bicubic", "unknown")


def div2k_pair_files(root, split: str = "train", scale: int = 4, track: str = "bicubic") -> list[tuple[str, str]]:
    """``(high-resolution, low-resolution)`` paths of DIV2K, sorted by name.

    ``root/DIV2K_<split>_HR/0001.png`` pairs with ``root/DIV2K_<split>_LR_<track>/X<scale>/0001x<scale>.png``
    (e.g. ``DIV2K_train_LR_bicubic/X4/0001x4.png``; the validation split is ``valid``, images 0801-0900).
    Read a pair with :func:`read_sr_pair`. Raises a ValueError naming the folder or file that is missing.
    """
    if split not in DIV2K_SPLITS:
        raise ValueError(f"split must be one of {DIV2K_SPLITS}, got {split!r}")
    if track not in DIV2K_TRACKS:
        raise ValueError(f"track must be one of {DIV2K_TRACKS}, got {track!r}")
    if isinstance(scale, bool) or scale not in (2, 3, 4):
        raise ValueError(f"scale must be 2, 3 or 4 (DIV2K's X2, X3, X4), got {scale!r}")
    root = Path(root)
    high_dir = root / f"DIV2K_{split}_HR"
    low_dir = root / f"DIV2K_{split}_LR_{track}" / f"X{scale}"
    for folder in (high_dir, low_dir):
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder; a DIV2K root holds DIV2K_{split}_HR/ and "
                             f"DIV2K_{split}_LR_{track}/X{scale}/")
    pairs = []
    for high in sorted(high_dir.iterdir()):
        if high.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        low = low_dir / f"{high.stem}x{scale}{high.suffix}"
        if not low.is_file():
            raise ValueError(f"no low-resolution image {low} for {high}")
        pairs.append((str(high), str(low)))
    if not pairs:
        raise ValueError(f"no images in {high_dir}")
    return pairs


def read_sr_pair(high, low, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x0, y)`` of super-resolution: the high-resolution image, and the low-resolution one up-sampled
    bicubically to its size (:func:`restoregrad_adapter.contrib.data.blur_sr.bicubic_resize`); ``HxWx3`` float32.

    The low-resolution image must be ``scale`` times smaller, its sides rounded down or up (as MATLAB's
    ``imresize`` rounds); anything else raises a ValueError naming both files.
    """
    from ...io import read_image
    from .blur_sr import bicubic_resize

    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    x0, small = read_image(high), read_image(low)
    for side, (big, little) in zip(("height", "width"), zip(x0.shape[:2], small.shape[:2])):
        if little not in (big // scale, -(-big // scale)):
            raise ValueError(f"the low-resolution image {low} is {small.shape[1]} x {small.shape[0]}, but {high} "
                             f"({x0.shape[1]} x {x0.shape[0]}) shrunk {scale} times needs a {side} of "
                             f"{big / scale:g}")
    return x0, bicubic_resize(small, x0.shape[:2])


# ---------------------------------------------------------------------- audio layouts
def audio_pair_files(clean_dir, noisy_dir) -> list[tuple[str, str]]:
    """``(clean, noisy)`` paths of the audio files whose names appear in both folders, sorted by name."""
    clean, noisy = Path(clean_dir), Path(noisy_dir)
    for name, folder in (("clean_dir", clean), ("noisy_dir", noisy)):
        if not folder.is_dir():
            raise ValueError(f"{name} {folder} is not a folder")
    names = sorted(p.name for p in clean.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
    pairs = [(str(clean / n), str(noisy / n)) for n in names if (noisy / n).exists()]
    if not pairs:
        raise ValueError(f"no files with the same name in {clean} and {noisy}")
    return pairs


#: VoiceBank+DEMAND's folders: split -> (clean, noisy), files of the same name paired.
VOICEBANK_FOLDERS = {"train": ("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav"),
                     "test": ("clean_testset_wav", "noisy_testset_wav")}


def voicebank_pair_files(root, split: str = "train") -> list[tuple[str, str]]:
    """``(clean, noisy)`` paths of VoiceBank+DEMAND: ``clean_trainset_28spk_wav/`` and
    ``noisy_trainset_28spk_wav/`` (``split="train"``), ``clean_testset_wav/`` and ``noisy_testset_wav/``
    (``"test"``)."""
    if split not in VOICEBANK_FOLDERS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return audio_pair_files(*(Path(root) / name for name in VOICEBANK_FOLDERS[split]))


# ---------------------------------------------------------------------- reading pairs
def read_image_pair(clean, degraded) -> tuple[np.ndarray, np.ndarray]:
    """``(x0, y)``: a clean and a degraded image of the same size, ``HxWx3`` float32 in ``[0, 1]``.

    ``clean`` and ``degraded`` are paths or PIL images (see :func:`restoregrad_adapter.io.read_image`).
    """
    from ...io import read_image

    x0, y = read_image(clean), read_image(degraded)
    if x0.shape != y.shape:
        raise ValueError(f"the degraded image {degraded} is {y.shape[1]} x {y.shape[0]} but the clean image {clean} "
                         f"is {x0.shape[1]} x {x0.shape[0]}")
    return x0, y


def read_audio_pair(clean, noisy, sample_rate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x0, y)``: a clean and a noisy waveform (paths or bytes), mixed down to mono, resampled to
    ``sample_rate`` (when given) and cut to their common length; float32 ``(L,)``.

    With ``sample_rate=None`` both files must have the same rate.
    """
    from ...io import read_audio

    (x0, rate), (y, noisy_rate) = (read_audio(s, sample_rate=sample_rate, mix_to_mono=True) for s in (clean, noisy))
    if rate != noisy_rate:
        raise ValueError(f"the clean audio is at {rate} Hz but the noisy audio at {noisy_rate} Hz; pass sample_rate")
    length = min(len(x0), len(y))
    return x0[:length], y[:length]


#: The noisy peak :func:`normalize_level` brings speech pairs to (saved as the adapter's ``input_peak``).
SPEECH_PEAK = 0.95


def normalize_level(x0: np.ndarray, y: np.ndarray, peak: float = SPEECH_PEAK) -> tuple[np.ndarray, np.ndarray]:
    """Scale a (clean, noisy) pair by one factor so that the noisy peak is ``peak`` (the SNR is unchanged).

    The learned prior's scale follows the signal's: at very low levels sigma sits at its floor
    sigma_min everywhere, so utterances are brought to a common level first. A silent ``y`` is
    returned unchanged.
    """
    top = float(np.abs(y).max())
    if top == 0:
        return x0, y
    scale = np.float32(peak / top)
    return x0 * scale, y * scale


# ---------------------------------------------------------------------- images and tensors
def downscale(image: np.ndarray, longest: int) -> np.ndarray:
    """Shrink an ``HxWx3`` image in ``[0, 1]`` (bicubic, through 8 bits) so its longest side is at most
    ``longest``; smaller images are returned as they are."""
    height, width = image.shape[:2]
    if max(height, width) <= longest:
        return image
    from PIL import Image

    scale = longest / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    as_uint8 = Image.fromarray((image * 255).round().astype(np.uint8))
    return np.asarray(as_uint8.resize(size, Image.BICUBIC), dtype=np.float32) / 255.0


def image_to_tensor(image: np.ndarray):
    """``(..., H, W, C)`` in ``[0, 1]`` -> a contiguous float32 tensor ``(..., C, H, W)`` in ``[-1, 1]``
    (``2 x - 1``, WeatherDiff's normalisation)."""
    import torch

    return (torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, -3).float() * 2 - 1).contiguous()


def tensor_to_image(tensor) -> np.ndarray:
    """A tensor ``(..., C, H, W)`` in ``[-1, 1]`` -> a float32 array ``(..., H, W, C)`` in ``[0, 1]`` (clamped)."""
    return ((tensor.detach().float().cpu() + 1) / 2).clamp(0, 1).movedim(-3, -1).numpy()
