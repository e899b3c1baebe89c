"""An image argument as the API takes it: an http(s) URL, a local file sent as base64, or
base64 text; anything else is refused before a request is sent."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import anyio

from ._validate import MAX_IMAGE_BYTES, is_http_url
from .errors import InvalidArgumentError

__all__ = ["image_argument"]

_BASE64 = re.compile(r"[A-Za-z0-9+/\s]+={0,2}\s*")


async def image_argument(image: str | os.PathLike[str], name: str) -> str:
    """An image as the API takes it: a URL as it is, a local file read into base64, base64
    text as it is. Raises `InvalidArgumentError` (nothing sent) for anything else."""
    if isinstance(image, str) and (is_http_url(image) or image.startswith("data:")):
        return image  # a data: URL is refused, with a reason, by the request's checks
    path = Path(image)
    if await anyio.to_thread.run_sync(path.is_file):
        return await anyio.to_thread.run_sync(_read_base64, path, name)
    if isinstance(image, str) and len(image) >= 16 and _BASE64.fullmatch(image):
        return image
    raise InvalidArgumentError(
        f"{name} {str(image)[:60]!r} is neither an http(s) URL, nor a file that exists, nor "
        "base64 text. Nothing was sent."
    )


def _read_base64(path: Path, name: str) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise InvalidArgumentError(
                f"{name} {path} is {size / 2**20:.1f} MB; the API takes at most "
                f"{MAX_IMAGE_BYTES >> 20} MB. Nothing was sent."
            )
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as exc:
        raise InvalidArgumentError(
            f"{name} {path} cannot be read ({exc}). Nothing was sent."
        ) from exc
