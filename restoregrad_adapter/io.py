"""Reading and writing the files of restoration work: images, audio, figures and JSON.

Readers return what the rest of the library expects: images as ``HxWx3`` float32 arrays in
``[0, 1]``, audio as mono float32 waveforms. A file that cannot be read as asked raises
:class:`InputFileError` (a ``ValueError``) whose message names the file.

Writers are atomic: they write to a temporary name in the target's folder, then rename it onto the
target, so a file is either complete or absent (never half written), also when a run is killed.

Needs the ``images`` extra (Pillow, matplotlib) for images and figures and the ``audio`` extra
(soundfile, scipy) for audio; those packages are imported only by the functions that use them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "AUDIO_EXTENSIONS",
    "InputFileError",
    "atomic_path",
    "read_image",
    "read_audio",
    "write_image",
    "write_audio",
    "write_json",
    "save_figure",
]


#: File suffixes (lower case) read as images and as audio.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac")


class InputFileError(ValueError):
    """A file that cannot be read as the caller asked; the message names the file."""


# ---------------------------------------------------------------------- reading
#: PIL's single-channel integer modes a 16-bit greyscale PNG opens as; full scale 65535.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _image_to_array(image) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16-bit greyscale: PIL's convert("RGB") would clip it to 8 bits (a white image); scale it instead.
        grey = np.asarray(image, dtype=np.float64) / 65535.0
        return np.repeat(grey.clip(0.0, 1.0)[..., None], 3, axis=2).astype(np.float32)
    if image.mode == "F":
        raise InputFileError(f"{getattr(image, 'filename', '') or 'the image'}: a floating-point image (PIL mode 'F') "
                             "has no defined range; expected 8- or 16-bit images.")
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def read_image(source) -> np.ndarray:
    """An image as an ``HxWx3`` float32 array in ``[0, 1]`` (grey and RGBA images become RGB; 16-bit
    greyscale keeps its full range).

    Args:
        source: a path, or an already opened PIL image (e.g. a value of a ``datasets`` Image column).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return _image_to_array(source)
    try:
        with Image.open(source) as image:
            return _image_to_array(image)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise InputFileError(f"{source}: cannot read the image ({error}).") from None


def read_audio(source, sample_rate: int | None = None, mix_to_mono: bool = False) -> tuple[np.ndarray, int]:
    """A mono float32 waveform and its sample rate.

    Args:
        source: a path, or the bytes of an audio file (e.g. an undecoded ``datasets`` Audio value).
        sample_rate: resample to this rate (polyphase, :func:`restoregrad_adapter.contrib.data.speech.resample`)
            when the file has another one; ``None`` keeps the file's rate.
        mix_to_mono: average the channels of a multi-channel file; when ``False`` such a file raises
            :class:`InputFileError`.

    Returns:
        ``(waveform, rate)``: ``(L,)`` float32 samples and their rate (``sample_rate`` when given).
    """
    import soundfile

    name = "<audio bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        audio, rate = soundfile.read(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source),
                                     dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as error:  # soundfile.LibsndfileError is a RuntimeError
        raise InputFileError(f"{name}: cannot read the audio file ({error}).") from None
    if audio.shape[1] != 1 and not mix_to_mono:
        raise InputFileError(f"{name}: has {audio.shape[1]} channels; mono audio is expected (mix down first, "
                             "e.g. `sox in.wav -c 1 out.wav`).")
    waveform = audio.mean(axis=1) if audio.shape[1] != 1 else audio[:, 0]
    if len(waveform) == 0:
        raise InputFileError(f"{name}: the audio file has no samples.")
    if not np.isfinite(waveform).all():
        raise InputFileError(f"{name}: the audio holds NaN or infinite samples.")
    if sample_rate is not None and rate != sample_rate:
        from .contrib.data.speech import resample

        return resample(waveform, rate, sample_rate).astype(np.float32), sample_rate
    return waveform, rate


# ---------------------------------------------------------------------- writing
def usual_mode(folder: bool = False) -> int:
    """The permission bits a plain ``open()`` (or ``mkdir`` for ``folder``) gives under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix) to write to; renamed onto ``path`` on success.

    The folder is created when missing. If the block raises, the temporary file is removed and
    ``path`` is left as it was::

        with atomic_path("out/table.csv") as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, usual_mode())  # mkstemp's 0600 -> what a plain open() would give
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_PIL_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".webp": "WEBP"}


def write_image(path, image: np.ndarray) -> None:
    """Write an ``HxWx3`` array in ``[0, 1]`` (clipped) as 8-bit RGB; the format follows the suffix (PNG
    by default)."""
    from PIL import Image

    path = Path(path)
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format=_PIL_FORMATS.get(path.suffix.lower(), "PNG"))


def write_audio(path, audio: np.ndarray, rate: int) -> None:
    """Write a waveform; WAV files as 16-bit PCM (values outside ``[-1, 1]`` clip)."""
    import soundfile

    path = Path(path)
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), audio, rate, subtype="PCM_16" if path.suffix.lower() == ".wav" else None)


def write_json(obj, path, indent: int = 2) -> None:
    """Write ``obj`` as indented JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent))


def save_figure(fig, path, dpi: int = 100) -> None:
    """Save a matplotlib figure as a PNG cropped to its content (``bbox_inches="tight"``), then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
