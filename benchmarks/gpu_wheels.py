"""Wheels the GPU suite carries to a bare device machine, and the install of the missing ones.

The device image (Python 3.12, torch, Triton, numpy, onnx, onnxruntime) lacks diffusers and may
lack others. ``prepare`` (here, with PyPI) downloads the needed wheels for CPython 3.12 on
manylinux x86-64 into ``.gpu-wheels/`` (git-ignored; the device tool carries it), the versions
this project's environment runs where it has them. ``plan`` / ``install`` (there, offline) pick
the wheels whose distribution is missing or too old and ``pip install --target`` them into a
private folder put first on ``sys.path``; nothing touches the image's environment.

No torch here: this runs before anything else, in the interpreter that will run the suite.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

# What the suite imports beyond the image's guaranteed packages (the project's runtime
# dependencies, pyproject.toml). opencv-python-headless (~60 MB) and scikit-image are not
# carried: the tracking stage, the only user, is skipped with the reason when they are missing.
TOP_LEVEL = (
    "diffusers>=0.30",
    "safetensors>=0.4",
    "huggingface_hub>=0.23",
    "click>=8.1",
    "tqdm>=4.66",
    "pillow>=10",
)
# On the image for sure (the brief's image: torch with its own dependencies, Triton, numpy,
# onnx, onnxruntime): never carried.
IMAGE = {
    canonicalize_name(n)
    for n in (
        "torch triton numpy onnx onnxruntime filelock typing-extensions sympy networkx jinja2 "
        "fsspec setuptools markupsafe mpmath protobuf"
    ).split()
}
TARGET_ENV = {  # the device's interpreter, for markers while preparing
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}
PLATFORMS = [
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_35_x86_64",
    "manylinux_2_39_x86_64",
]
WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-")


def wheel_info(path: Path) -> tuple[str, Version]:
    """(canonical distribution name, version) from a wheel's file name."""
    m = WHEEL_NAME.match(path.name)
    if m is None:
        raise ValueError(f"not a wheel name: {path.name}")
    return canonicalize_name(m["name"]), Version(m["version"])


def wheel_requirements(path: Path) -> list[Requirement]:
    """The wheel's Requires-Dist lines (extras included; callers evaluate markers)."""
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(name).decode("utf-8", "replace")
    return [
        Requirement(line.split(":", 1)[1].strip())
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def _applies(req: Requirement, env: dict | None) -> bool:
    return req.marker is None or req.marker.evaluate(env or {"extra": ""})


def installed_versions(exclude: Path | None = None) -> dict[str, Version]:
    """canonical name → version of every distribution on this interpreter's path (``exclude``:
    a folder whose distributions do not count, e.g. the suite's own install target). The first
    on the path wins, as for imports."""
    paths = [p for p in sys.path if exclude is None or Path(p or ".").resolve() != exclude]
    out: dict[str, Version] = {}
    for dist in metadata.distributions(path=paths):
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name and name not in out:
            try:
                out[name] = Version(dist.version)
            except Exception:  # an unparsable local version: present, treat as new
                out[name] = Version("0")
    return out


def plan(wheels: dict[str, Path], have: dict[str, Version | None]) -> tuple[list[Path], list[str]]:
    """The carried wheels to install so that ``TOP_LEVEL`` and everything those wheels need is
    satisfied, given the installed versions ``have`` (name → Version or None; missing names are
    looked up lazily by the caller). Returns (wheels, problems)."""
    chosen: dict[str, Path] = {}
    problems: list[str] = []
    queue = [Requirement(r) for r in TOP_LEVEL]
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in chosen:
            version = wheel_info(chosen[name])[1]
            if not req.specifier.contains(version, prereleases=True):
                problems.append(f"carried {name} {version} does not satisfy {req}")
            continue
        current = have.get(name)
        if current is not None and req.specifier.contains(current, prereleases=True):
            continue
        wheel = wheels.get(name)
        if wheel is None:
            what = f"{name} {current} installed" if current else f"{name} missing"
            problems.append(
                f"{what}, need {req}, no wheel carried (python benchmarks/gpu_suite.py --prepare)"
            )
            continue
        if not req.specifier.contains(wheel_info(wheel)[1], prereleases=True):
            problems.append(f"carried {wheel.name} does not satisfy {req}")
            continue
        chosen[name] = wheel
        queue += [r for r in wheel_requirements(wheel) if _applies(r, None)]
    return list(chosen.values()), problems


def carried(folder: Path) -> dict[str, Path]:
    """name → wheel in ``folder`` (one per name: the newest)."""
    out: dict[str, Path] = {}
    for path in sorted(folder.glob("*.whl")) if folder.is_dir() else []:
        name, version = wheel_info(path)
        if name not in out or wheel_info(out[name])[1] < version:
            out[name] = path
    return out


def install(folder: Path, site: Path, log=print) -> dict:
    """Install the carried wheels that this interpreter lacks into ``site`` and put it first on
    ``sys.path``. Returns {installed, present, problems, site}."""
    site = site.resolve()
    wheels = carried(folder)
    installed = installed_versions(exclude=site)
    names = {canonicalize_name(Requirement(r).name) for r in TOP_LEVEL} | set(wheels)
    for w in wheels.values():  # everything a carried wheel may ask for
        names |= {canonicalize_name(r.name) for r in wheel_requirements(w) if _applies(r, None)}
    have = {n: installed.get(n) for n in names}
    todo, problems = plan(wheels, have)
    result = {
        "wheels_dir": str(folder),
        "site": str(site),
        "installed": sorted(p.name for p in todo),
        "present": {n: str(v) for n, v in sorted(have.items()) if v is not None},
        "problems": problems,
    }
    stamp = site / ".gpu-suite-wheels"
    wanted = "\n".join(sorted(p.name for p in todo))
    if todo and not (stamp.is_file() and stamp.read_text() == wanted):
        shutil.rmtree(site, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--target",
            str(site),
            *map(str, todo),
        ]
        log("installing " + ", ".join(p.name for p in todo) + f" into {site}")
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            tail = (run.stderr or run.stdout).strip().splitlines()[-3:]
            raise RuntimeError("pip install failed: " + " | ".join(tail))
        stamp.write_text(wanted)
    if todo and str(site) not in sys.path:
        sys.path.insert(0, str(site))
    return result


def prepare(folder: Path, log=print) -> dict:
    """Download the wheels (CPython 3.12, manylinux x86-64, no dependencies resolved by pip:
    the closure is walked here) into ``folder``. Versions: this environment's where it has a
    satisfying one, else pip's newest match. Returns {wheels: {file: bytes}, total_bytes}."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    done: set[str] = set()
    installed = installed_versions()
    queue = [Requirement(r) for r in TOP_LEVEL]
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in done or name in IMAGE:
            continue
        done.add(name)
        local = installed.get(name)
        spec = f"{req.name}=={local}" if local and req.specifier.contains(local) else str(req)
        spec = spec.split(";")[0]
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            "--abi",
            "cp312",
            "--abi",
            "abi3",
            "--abi",
            "none",
            "-d",
            str(folder),
            spec,
        ]
        for p in PLATFORMS + ["any"]:
            cmd += ["--platform", p]
        log(f"downloading {spec}")
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"pip download {spec} failed: {run.stderr.strip()[-400:]}")
        wheel = carried(folder).get(name)
        if wheel is None:
            raise RuntimeError(f"pip download {spec} left no wheel named {name}")
        queue += [r for r in wheel_requirements(wheel) if _applies(r, TARGET_ENV)]
    sizes = {p.name: p.stat().st_size for p in sorted(folder.glob("*.whl"))}
    return {"wheels": sizes, "total_bytes": sum(sizes.values())}


if __name__ == "__main__":  # python benchmarks/gpu_wheels.py [DIR]: the preparation step alone
    out = prepare(Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu-wheels"))
    print(f"{len(out['wheels'])} wheels, {out['total_bytes'] / 2**20:.1f} MiB")
