"""The RestoreGrad demo as a Hugging Face Space: the page of ``restoregrad demo`` for a Hub adapter.

Set the Space's variable ``RESTOREGRAD_ADAPTER`` to an adapter repo id (``org/name``, pushed with
``adapter.push_to_hub``) or to a folder; optional ``RESTOREGRAD_MAX_PIXELS``, ``RESTOREGRAD_MAX_SECONDS``
and ``RESTOREGRAD_MAX_FILE_MB`` change the upload limits. Locally: ``RESTOREGRAD_ADAPTER=DIR python app.py``.
"""

import os

from restoregrad_adapter.demo import UploadLimits, launch_kwargs, load_demo

ADAPTER = os.environ.get("RESTOREGRAD_ADAPTER")
if not ADAPTER:
    raise SystemExit("Set RESTOREGRAD_ADAPTER to the adapter to serve: a Hub repo id (org/name) or a folder.")

LIMITS = UploadLimits(
    max_file_mb=float(os.environ.get("RESTOREGRAD_MAX_FILE_MB", 20)),
    max_pixels=int(os.environ.get("RESTOREGRAD_MAX_PIXELS", 512 * 512)),
    max_seconds=float(os.environ.get("RESTOREGRAD_MAX_SECONDS", 30)),
)
demo = load_demo(ADAPTER, limits=LIMITS)
LAUNCH_KWARGS = launch_kwargs(LIMITS)

if __name__ == "__main__":
    demo.launch(**LAUNCH_KWARGS)  # a Space serves on 0.0.0.0:7860 by itself
