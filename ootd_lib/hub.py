"""Locating weight files: a local folder laid out like a hub repo, or a Hugging Face Hub repo id (downloads only the
files asked for). Every file handed out is checked, because the most common user failure with the released weights is
a Git-LFS pointer or a truncated download that later surfaces as an obscure INVALID_PROTOBUF / unpickling error.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Iterable

from .errors import WeightsError

OFFICIAL_REPO = "levihsu/OOTDiffusion"
CLIP_REPO = "openai/clip-vit-large-patch14"
_LFS_MAGIC = b"version https://git-lfs.github.com/spec"


def is_lfs_pointer(path: str | Path) -> bool:
    """True when ``path`` is a Git-LFS pointer text file instead of the real binary."""
    with open(path, "rb") as f:
        return f.read(len(_LFS_MAGIC)) == _LFS_MAGIC


def redownload_hint(filename: str, repo_id: str = OFFICIAL_REPO) -> str:
    return (f"re-download it with `huggingface-cli download {repo_id} {filename}` (or `git lfs pull` inside a git clone "
            f"of https://huggingface.co/{repo_id})")


def check_weight_file(path: str | Path, filename: str | None = None, repo_id: str = OFFICIAL_REPO,
                      min_bytes: int = 1, complete: bool = False) -> Path:
    """Return ``path`` if it looks like a real weight file, else raise a one-line ``WeightsError``.

    ``filename`` is the path inside the hub repo, used in the re-download hint. ``complete``: also check from the
    file's own structure that it is not cut short (safetensors and ``torch.save`` zip files; see :func:`_truncation`).
    """
    path = Path(path)
    hint = redownload_hint(filename or path.name, repo_id)
    if not path.is_file():
        raise WeightsError(f"weight file {path} is missing; {hint}")
    if is_lfs_pointer(path):
        raise WeightsError(f"weight file {path} is a Git-LFS pointer, not the model itself; {hint}")
    if path.stat().st_size < min_bytes:
        raise WeightsError(f"weight file {path} is truncated ({path.stat().st_size} bytes, expected at least "
                           f"{min_bytes}); {hint}")
    why = _truncation(path) if complete else None
    if why:
        raise WeightsError(f"weight file {path} is truncated or incomplete ({why}); {hint}")
    return path


def _truncation(path: Path) -> str | None:
    """Why a weight file is cut short, or None. Cheap (no tensor is read): a safetensors header states where its
    last tensor ends; the zip archive ``torch.save`` writes (``.bin``, ``.pth``) ends with a central directory."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if path.suffix == ".safetensors":
            n = int.from_bytes(head, "little") if len(head) == 8 else None
            if n is None or 8 + n > size:
                return f"{size} bytes, the header is cut off"
            try:
                header = json.loads(f.read(n))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                return "the header is not a safetensors header"
            if 8 + n + end > size:
                return f"{size} bytes, the header promises {8 + n + end}"
        elif head[:2] == b"PK" and not zipfile.is_zipfile(path):
            return f"{size} bytes, the zip archive has no end record"
    return None


def resolve_files(source: str | Path, filenames: Iterable[str], repo_id: str | None = None) -> Path:
    """Folder holding ``filenames`` (paths relative to the repo root, glob patterns allowed for downloads).

    ``source`` is either an existing local folder laid out like the hub repo, or a hub repo id; for a repo id only
    the listed files are downloaded (``huggingface_hub.snapshot_download(allow_patterns=...)``).
    """
    filenames = list(filenames)
    local = Path(source).expanduser()
    if local.is_dir():
        return local
    if str(source).startswith((".", "/", "~")) or Path(str(source)).suffix:
        raise WeightsError(f"weights folder {source} does not exist; pass a local folder laid out like "
                           f"https://huggingface.co/{repo_id or OFFICIAL_REPO} or a hub repo id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=str(source), allow_patterns=filenames))
    except Exception as exc:  # network errors, gated repos, missing files: all end the same way for the user
        raise WeightsError(f"could not download {filenames} from the hub repo {source!r} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); download them on a machine with internet "
                           f"and pass the local folder instead") from exc
