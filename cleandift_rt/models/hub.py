"""Hugging Face Hub access (through huggingface_hub, cached) with one-line errors.

Every hub read resolves the repository's commit first: online with a short timeout (a few
seconds, ``CLEANDIFT_RT_HUB_TIMEOUT``), else from the local cache (``refs/main`` →
``snapshots/<commit>/``). ``HF_HUB_OFFLINE`` skips the network entirely. A repository that the
hub does not have (deleted, private, misspelt) is still served from the cache when it is there.
The commit of every file used is returned, so results can name the exact weights they came from.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError, one_line

# Files a diffusers SD pipeline needs for feature extraction (text encoder fetched separately).
PIPELINE_PATTERNS = ["model_index.json", "unet/config.json", "vae/config.json"]
WEIGHT_PATTERNS = {
    "unet": ["unet/diffusion_pytorch_model.safetensors"],
    "vae": ["vae/diffusion_pytorch_model.safetensors"],
    "text": [
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/*",
    ],
}
DEFAULT_TIMEOUT_S = 5.0
BASE_HINT = "or pass --base DIR, a local diffusers Stable Diffusion folder (Python: base=DIR)"


def cache_dir() -> Path:
    """The project's own cache (prompt embeddings): $CLEANDIFT_RT_CACHE or ~/.cache/cleandift-rt."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cleandift-rt"
    return Path(os.environ.get("CLEANDIFT_RT_CACHE", default))


def hub_timeout() -> float:
    """Seconds to wait for the hub to answer a metadata request ($CLEANDIFT_RT_HUB_TIMEOUT)."""
    try:
        return max(0.1, float(os.environ.get("CLEANDIFT_RT_HUB_TIMEOUT", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set (read now, and as huggingface_hub read it at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return env or bool(constants.HF_HUB_OFFLINE)


@dataclass(frozen=True)
class HubSnapshot:
    """A local snapshot folder of ``repo`` at ``commit`` (40-hex sha) holding the files read."""

    repo: str
    commit: str
    folder: Path

    def files(self, patterns: list[str]) -> list[dict[str, str]]:
        """{repo, file, commit} of every file of the snapshot matching ``patterns``, sorted."""
        found = []
        for path in sorted(self.folder.rglob("*")):
            rel = path.relative_to(self.folder).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in patterns):
                found.append({"repo": self.repo, "file": rel, "commit": self.commit})
        return found


def _hint(repo: str, hint: str) -> str:
    return (
        f"download it where there is internet (`hf download {repo}`) and copy the Hugging Face "
        f"cache here (HF_HOME), {hint}"
    )


def _online_commit(repo: str) -> tuple[str | None, str]:
    """(commit of ``repo``'s main branch, "") online; (None, why not) when it cannot be asked."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    if hub_offline():
        return None, "offline (HF_HUB_OFFLINE is set)"
    try:
        return HfApi().model_info(repo, timeout=hub_timeout()).sha, ""
    except RepositoryNotFoundError:  # includes gated repositories without access
        return None, "the hub has no such repository (deleted, private, gated or misspelt)"
    except Exception as exc:  # unreachable, timeout, proxy, 5xx: fall back to the cache
        return None, f"the hub is unreachable ({type(exc).__name__}: {one_line(exc)})"


def snapshot(
    repo: str,
    patterns: list[str],
    *,
    revision: str | None = None,
    role: str = "",
    hint: str = BASE_HINT,
) -> HubSnapshot:
    """The local snapshot of ``repo`` holding the files matching ``patterns`` (downloaded into
    the Hugging Face cache when missing and the hub answers). ``revision``: a commit to read at
    (default: the hub's main, else the cached one). ``role`` (e.g. "base of preset 'sd21'") and
    ``hint`` go into the error message. Any failure → ModelError, one line."""
    from huggingface_hub import snapshot_download

    what = f"'{repo}'" + (f" ({role})" if role else "")
    why = ""
    if revision is None:
        revision, why = _online_commit(repo)
    try:
        if revision is not None and not hub_offline():
            folder = snapshot_download(
                repo, revision=revision, allow_patterns=patterns, etag_timeout=hub_timeout()
            )
        else:
            folder = snapshot_download(
                repo, revision=revision, allow_patterns=patterns, local_files_only=True
            )
    except Exception as exc:
        from huggingface_hub import constants

        reason = one_line(exc)
        if why or hub_offline():  # the hub could not be asked: the cache was the only place
            why = why or "offline (HF_HUB_OFFLINE is set)"
            reason = f"{why}, and it is not in the cache ({constants.HF_HUB_CACHE})"
        raise ModelError(
            f"cannot get {what} from the hub: {reason}; " + _hint(repo, hint)
        ) from None
    snap = HubSnapshot(repo, Path(folder).name, Path(folder))
    missing = [p for p in patterns if not any(True for _ in snap.folder.glob(p))]
    if missing:
        where = f"cached; {why}" if why else "from the hub"
        raise ModelError(
            f"the snapshot of {what} at commit {snap.commit} ({where}) has no {missing[0]} "
            "(safetensors weights are required); " + _hint(repo, hint)
        )
    return snap


def hub_file(repo: str, filename: str, *, role: str = "", hint: str = BASE_HINT) -> HubSnapshot:
    """The snapshot holding one file of a hub repo (downloaded when missing): the file is
    ``result.folder / filename``, its commit ``result.commit``."""
    return snapshot(repo, [filename], role=role, hint=hint)


def looks_like_repo_id(name: str) -> bool:
    """'org/name' as the hub spells ids: one slash, letters, digits, '-', '_', '.', no file
    extension, no leading '.' (so './x' and '../x' are paths, not ids)."""
    import re

    if name.endswith(".safetensors") or "--" in name or ".." in name:
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name) is not None
