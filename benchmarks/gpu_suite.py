"""One prepared GPU suite: every GPU claim of the project measured in one run of ≤ 8 minutes.

    python benchmarks/gpu_suite.py --prepare            # here, once (PyPI): wheels → .gpu-wheels/
    python benchmarks/gpu_suite.py --out DIR            # on the GPU machine (DIR = $OUT there)
    python benchmarks/gpu_suite.py --dry-run --out DIR  # every stage on the CPU, tiny sizes (CI)
    python benchmarks/gpu_suite.py --validate DIR/gpu_suite.json [--strict]

Stages (benchmarks/gpu_stages.py, gpu_bench_stages.py), in this order, each in its own forked
process with its own time budget (killed at it; what it saved is kept), skipped with a recorded
reason when the total budget or a dependency is missing, a failure recorded (message +
traceback tail) without stopping the others: environment (hardware, driver, versions, measured
matmul / copy peaks), matcher (Triton vs the naive pipeline: parity, time, peak memory),
bench_eager (random:sd21, torch fp16/bf16 eager and channels-last, DIFT baseline, FLOPs, MFU),
tracking, training, cpp_matcher (the C++ CUDA matcher, built with cmake when nvcc is there),
gpu_tests (pytest -m "gpu or tensorrt"), bench_compile (torch.compile), bench_export
(AOTInductor built there, ONNX and TensorRT where a GPU runtime exists). Writes
DIR/gpu_suite.json (schema: benchmarks/gpu_report.py, with every performance target),
DIR/gpu_suite.md and DIR/gpu_suite.log.

Bootstrap: the device image lacks diffusers (and maybe more); the wheels that ``--prepare``
put in .gpu-wheels/ (carried to the machine) are installed, only those missing, with
``pip install --no-index --target /tmp/gpu-suite-site``, which goes first on sys.path and
PYTHONPATH. The project's .venv is never used. Exit status: 0 when no stage failed or timed out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # the repo first: benchmarks/training.py is no package

import gpu_report  # noqa: E402
import gpu_wheels  # noqa: E402

WHEELS = ROOT / ".gpu-wheels"
SITE = Path("/tmp/gpu-suite-site")
SCRATCH = Path(tempfile.gettempdir())  # run_suite makes a folder of its own under it
JSON_NAME, MD_NAME, LOG_NAME = "gpu_suite.json", "gpu_suite.md", "gpu_suite.log"


class Stage:
    """name, budgets (GPU, dry run) in seconds, the modules it imports, whether it needs CUDA
    (a GPU run without one skips it)."""

    def __init__(self, name: str, gpu_s: float, dry_s: float, needs=(), cuda=True):
        self.name, self.gpu_s, self.dry_s, self.needs, self.cuda = name, gpu_s, dry_s, needs, cuda


STAGES = [  # in priority order: what the targets need first, the long compiles last
    Stage("environment", 20, 30, cuda=False),
    Stage("matcher", 45, 60, ("triton",)),
    Stage("bench_eager", 60, 60, ("diffusers",)),
    Stage("tracking", 40, 40, ("diffusers", "cv2", "skimage")),
    Stage("training", 45, 45, ("diffusers",)),
    Stage("cpp_matcher", 50, 30),
    Stage("gpu_tests", 30, 45, ("pytest", "diffusers"), cuda=False),
    Stage("bench_compile", 100, 40, ("diffusers",)),
    Stage("bench_export", 90, 60, ("diffusers",)),
]
STAGE_NAMES = [s.name for s in STAGES]
MIN_STAGE_S = 10.0  # a stage starts only with at least this much of the total budget left
GRACE_S = 5.0  # after SIGTERM at the budget, SIGKILL


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_commit() -> str | None:
    try:
        run = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return run.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Log:
    """Lines to stdout (flushed) and to DIR/gpu_suite.log."""

    def __init__(self, path: Path):
        self.file = path.open("a", buffering=1)
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)
            self.file.write(line + "\n")


def run_stage(stage: Stage, args, budget: float, log: Log) -> dict:
    """Run one stage in a forked child (modules preloaded here, CUDA untouched here, so every
    stage starts fresh on the device) with ``budget`` seconds; returns its record."""
    out = Path(os.environ["GPU_SUITE_SCRATCH"]) / f"stage-{stage.name}.json"
    out.unlink(missing_ok=True)
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: its own process group (same session), output into the pipe
        os.setpgid(0, 0)  # not setsid: whoever ends the suite's session ends the stage too
        os.close(read_fd)
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        code = 1
        try:
            code = run_child(stage.name, out, budget, args.dry_run)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    try:  # also here: no race with a kill right after the fork
        os.setpgid(pid, pid)
    except OSError:  # the child did it already (or has exited)
        pass
    os.close(write_fd)
    tail: list[str] = []

    def pump() -> None:
        with os.fdopen(read_fd, errors="replace") as pipe:
            for line in pipe:
                log(f"  [{stage.name}] {line.rstrip()}")
                tail.append(line.rstrip())
                del tail[:-40]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        status = wait_child(pid, budget)
    except BaseException:  # e.g. Ctrl-C: take the stage down with the suite
        os.killpg(pid, signal.SIGKILL)
        raise
    timed_out = status is None
    if timed_out:
        for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            status = wait_child(pid, wait)
            if status is not None:
                break
    reader.join(timeout=5)
    seconds = time.perf_counter() - start
    try:
        record = json.loads(out.read_text())
    except (OSError, ValueError):
        record = {"status": "failed", "results": {}}
    record.setdefault("results", {})
    if timed_out:
        record["status"] = "timeout"
        record["reason"] = f"killed at its {budget:.0f} s budget; partial results kept" + (
            f" ({record['reason']})" if record.get("reason") else ""
        )
    elif status != 0 and record.get("status") != "failed":
        record["status"] = "failed"
        record["error"] = {
            "message": f"stage process ended with status {status}",
            "traceback_tail": tail[-15:],
        }
    if record["status"] == "failed":
        record.setdefault("error", {"message": "no result written", "traceback_tail": tail[-15:]})
        record.setdefault("reason", record["error"]["message"])
        record["error"].setdefault("output_tail", tail[-15:])
    record.update(seconds=round(seconds, 2), budget_s=round(budget, 1))
    return record


def wait_child(pid: int, timeout: float) -> int | None:
    """The child's exit code (negative: killed by that signal), or None after ``timeout``."""
    end = time.perf_counter() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.perf_counter() >= end:
            return None
        time.sleep(0.05)


def preload(log: Log) -> str | None:
    """Import the heavy modules once, here, so that each forked stage starts with them (a
    subprocess per stage would import torch and diffusers again each time). CUDA is not
    initialised here. Returns the import error, if any (stages then fail on their own)."""
    try:
        import gpu_bench_stages  # noqa: F401
        import gpu_stages  # noqa: F401
        import torch  # noqa: F401

        import cleandift_rt.bench  # noqa: F401
        import cleandift_rt.models  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        log(f"preload failed: {exc}")
        return f"{type(exc).__name__}: {exc}"
    return None


def missing_modules(names) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def cuda_check(env: dict) -> subprocess.Popen:
    """Start asking, in a subprocess, whether torch sees a CUDA device: the parent never
    initialises CUDA, so a broken driver cannot take the suite down (runs during the preload)."""
    code = "import torch; print(torch.cuda.is_available())"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def cuda_visible(proc: subprocess.Popen) -> tuple[bool, str]:
    """(visible, why not) from ``cuda_check``'s subprocess."""
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return False, "importing torch took over 120 s"
    if proc.returncode != 0:
        return False, "torch does not import: " + (err.strip().splitlines() or ["?"])[-1]
    return out.strip().endswith("True"), "torch.cuda.is_available() is False"


def run_suite(args) -> int:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="gpu-suite-", dir=SCRATCH))  # stage files, builds
    log = Log(out_dir / LOG_NAME)
    t0 = time.perf_counter()
    total = args.total_budget or (175.0 if args.dry_run else 450.0)
    deadline = t0 + total
    started = utc_now()
    mode = "dry-run" if args.dry_run else "gpu"
    log(f"gpu suite ({mode}), total budget {total:.0f} s, started {started}")
    stages: dict[str, dict] = {}

    # bootstrap: in this process, before anything imports diffusers
    b0 = time.perf_counter()
    try:
        boot = gpu_wheels.install(WHEELS, SITE, log=log)
        status = "partial" if boot["problems"] else "ok"
        stages["bootstrap"] = {"status": status, "results": boot}
        if boot["problems"]:
            stages["bootstrap"]["reason"] = "; ".join(boot["problems"])
        log(f"bootstrap: installed {boot['installed'] or 'nothing'}; problems {boot['problems']}")
    except Exception as exc:  # a broken pip or wheel: record, carry on with what is there
        boot = {"installed": [], "present": {}, "problems": [str(exc)]}
        stages["bootstrap"] = {
            "status": "failed",
            "reason": str(exc),
            "results": boot,
            "error": error_record(exc),
        }
    stages["bootstrap"].update(seconds=round(time.perf_counter() - b0, 2), budget_s=None)

    # the environment of every stage (forked) and of their subprocesses (pytest, cmake)
    env = os.environ
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", GPU_SUITE_SCRATCH=str(scratch))
    # torch.cuda.is_available() through NVML: a check in this process must not initialise the
    # CUDA driver, or the forked stages could not use it
    env.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    paths = ([str(SITE)] if boot.get("installed") else []) + [str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU path, GPU or not
        env.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
        env.setdefault("OMP_NUM_THREADS", "1")  # shared CI cores: one thread is steadier
    check = None if args.dry_run else cuda_check(dict(env))
    preload_error = preload(log)
    has_cuda, why_not = (False, "dry run") if check is None else cuda_visible(check)
    log(f"imports preloaded at {time.perf_counter() - t0:.0f} s")
    if preload_error:
        stages["bootstrap"]["preload_error"] = preload_error
    selected = args.stages.split(",") if args.stages else STAGE_NAMES
    for stage in STAGES:
        left = deadline - time.perf_counter()
        own = (stage.dry_s if args.dry_run else stage.gpu_s) * args.budget_scale
        budget = min(own, left - 2.0)
        reason = None
        if stage.name not in selected:
            reason = "not selected (--stages)"
        elif stage.cuda and not args.dry_run and not has_cuda:
            reason = f"no CUDA device: {why_not}"
        elif missing_modules(stage.needs):
            reason = "missing modules: " + ", ".join(missing_modules(stage.needs))
        elif budget < MIN_STAGE_S:
            reason = f"total budget: {max(left, 0):.0f} s left of {total:.0f} s"
        if reason:
            stages[stage.name] = {
                "status": "skipped",
                "reason": reason,
                "seconds": 0.0,
                "budget_s": 0.0,
                "results": {},
            }
            log(f"{stage.name}: skipped ({reason})")
            continue
        log(f"{stage.name}: start at {time.perf_counter() - t0:.0f} s, budget {budget:.0f} s")
        if stage.name == "gpu_tests":  # the C++ bindings the cpp stage built, if any
            built = (stages.get("cpp_matcher", {}).get("results") or {}).get("python_dir")
            if built:
                env["CLEANDIFT_RT_CPP_BUILD"] = built
        stages[stage.name] = run_stage(stage, args, budget, log)
        if budget < own:  # cut short by the total budget: a timeout then says little
            stages[stage.name]["budget_cut_by_total"] = True
        s = stages[stage.name]
        log(
            f"{stage.name}: {s['status']} in {s['seconds']:.1f} s"
            + (f" ({s['reason']})" if s.get("reason") else "")
        )

    env_results = stages.get("environment", {}).get("results") or {}
    report = {
        "schema": gpu_report.SCHEMA,
        "mode": mode,
        "command": "python benchmarks/gpu_suite.py " + " ".join(args.argv),
        "git_commit": git_commit(),
        "started_utc": started,
        "finished_utc": utc_now(),
        "total_seconds": round(time.perf_counter() - t0, 2),
        "total_budget_s": total,
        "hardware": env_results.get("hardware", {}),
        "driver": env_results.get("driver", {}),
        "versions": env_results.get("versions", {}),
        "bootstrap": boot,
        "stages": stages,
        "targets": gpu_report.evaluate_targets(stages, args.dry_run),
    }
    write_atomic(out_dir / JSON_NAME, json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(out_dir / MD_NAME, gpu_report.markdown(report) + "\n")
    if not args.keep_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    problems = gpu_report.validate_report(report)
    for p in problems:
        log(f"schema problem: {p}")
    bad = [n for n, s in stages.items() if s["status"] in gpu_report.BAD_STATUSES]
    log(
        f"wrote {out_dir / JSON_NAME} and {out_dir / MD_NAME} in {report['total_seconds']:.0f} s"
        + (f"; failed or timed out: {', '.join(bad)}" if bad else "")
    )
    for key, t in report["targets"].items():
        log(
            f"target {key}: measured {t['measured']} {t['unit']} (goal {t['comparison']} "
            f"{t['target']}) met={t['met']} {t['reason'] or t['source']}"
        )
    return 1 if bad or problems else 0


def error_record(exc: BaseException) -> dict:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines).rstrip().splitlines()
    return {
        "message": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
        "traceback_tail": text[-12:],
    }


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_child(name: str, out: Path, budget: float, dry_run: bool) -> int:
    """One stage in this (child) process: results saved to ``out`` as they come."""
    import gpu_bench_stages
    import gpu_stages

    ctx = gpu_stages.StageContext(out, budget, dry_run)
    try:
        module = gpu_stages if hasattr(gpu_stages, f"stage_{name}") else gpu_bench_stages
        getattr(module, f"stage_{name}")(ctx)
        if ctx.status != "skipped":
            ctx.finish()
    except BaseException as exc:  # recorded, never raised: the parent carries on
        ctx.fail(error_record(exc))
        traceback.print_exc()
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for gpu_suite.json / .md / .log ($OUT on the device)")
    p.add_argument("--dry-run", action="store_true", help="every stage on the CPU, tiny sizes")
    p.add_argument("--prepare", action="store_true", help="download the wheels into .gpu-wheels")
    p.add_argument("--validate", metavar="JSON", help="check a report against the schema")
    p.add_argument("--strict", action="store_true", help="--validate: failed stages too")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGE_NAMES)}")
    p.add_argument("--total-budget", type=float, help="seconds (default 450; dry run 175)")
    p.add_argument(
        "--keep-scratch",
        action="store_true",
        help="keep the stages' scratch folder (builds, artifacts, stage JSON)",
    )
    p.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply every stage's budget (a slower machine)",
    )
    args = p.parse_args(argv)
    args.argv = argv
    if args.prepare:
        got = gpu_wheels.prepare(WHEELS)
        for name, size in got["wheels"].items():
            print(f"{size / 2**20:7.2f} MiB  {name}")
        print(f"{len(got['wheels'])} wheels, {got['total_bytes'] / 2**20:.1f} MiB in {WHEELS}")
        return 0
    if args.validate:
        try:
            report = json.loads(Path(args.validate).read_text())
        except (OSError, ValueError) as exc:
            print(f"error: cannot read '{args.validate}': {exc}", file=sys.stderr)
            return 2
        problems = gpu_report.validate_report(report, strict=args.strict)
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        if not problems:
            print(
                f"{args.validate}: valid ({len(report['stages'])} stages, "
                f"{len(report['targets'])} targets)"
            )
        return 1 if problems else 0
    if not args.out:
        print("error: --out DIR is required (or --prepare / --validate)", file=sys.stderr)
        return 2
    if args.stages and (bad := set(args.stages.split(",")) - set(STAGE_NAMES)):
        print(f"error: unknown stages {sorted(bad)}: use {','.join(STAGE_NAMES)}", file=sys.stderr)
        return 2
    return run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
