"""The GPU suite's report: JSON schema, the performance targets, validation and the Markdown.

Pure Python (no torch): ``benchmarks/gpu_suite.py`` assembles the report from its stages'
results, and tests / CI validate a report without a GPU.

Report (``gpu_suite.json``, schema ``cleandift-rt.gpu-suite/1``)::

    schema, mode ("gpu" | "dry-run"), command, git_commit, started_utc, finished_utc,
    total_seconds, total_budget_s,
    hardware {gpu, gpu_memory_gib, compute_capability, sm_count, cpu, cpu_count, peaks{...}},
    driver {nvidia_driver, cuda_driver, ...}, versions {python, torch, cuda, triton, ...},
    bootstrap {installed, present, problems},
    stages {NAME: {status, seconds, budget_s, reason, error{message, traceback_tail}, results}},
    targets {KEY: {description, measured, target, comparison, unit, met, reason, source}}

A stage's ``status`` is ``ok`` (everything ran), ``partial`` (some parts skipped: ``reason``
says which), ``skipped`` (nothing ran: ``reason``), ``failed`` (an exception: ``error``) or
``timeout`` (killed at its budget; what it saved before is kept).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SCHEMA = "cleandift-rt.gpu-suite/1"
STATUSES = ("ok", "partial", "skipped", "failed", "timeout")
BAD_STATUSES = ("failed", "timeout")
TOP_KEYS = (
    "schema",
    "mode",
    "command",
    "started_utc",
    "finished_utc",
    "total_seconds",
    "total_budget_s",
    "hardware",
    "driver",
    "versions",
    "bootstrap",
    "stages",
    "targets",
)
TARGET_FIELDS = ("description", "measured", "target", "comparison", "unit", "met", "reason")

# The full-size configurations the targets name, and the dry run's stand-ins (CPU, tiny model).
GPU_SIZES = {"resolution": 768, "batch": 8, "matcher": (4096, 48, 1280, 768)}
DRY_SIZES = {"resolution": 64, "batch": 2, "matcher": (8, 6, 16, 24)}


def bench_rows(stages: dict) -> list[dict]:
    """Every timed CleanDIFT row of the bench stages (eager, compile, exported backends)."""
    rows = []
    for name in ("bench_eager", "bench_compile", "bench_export"):
        rows += (stages.get(name, {}).get("results") or {}).get("rows", [])
    return rows


def dift_rows(stages: dict) -> list[dict]:
    return (stages.get("bench_eager", {}).get("results") or {}).get("dift", [])


def _stage_note(stages: dict, names: tuple[str, ...]) -> str:
    notes = []
    for name in names:
        st = stages.get(name)
        if st is None:
            notes.append(f"{name} not run")
        else:
            why = st.get("reason") or (st.get("error") or {}).get("message") or ""
            notes.append(f"{name} {st['status']}" + (f": {why}" if why else ""))
    return "; ".join(notes)


def _best(rows: list[dict], key: str, pick: Callable = min) -> dict | None:
    rows = [r for r in rows if r.get(key) is not None]
    return pick(rows, key=lambda r: r[key]) if rows else None


def _variant(row: dict) -> str:
    return f"{row['variant']} {row['resolution']}² b{row['batch']}"


def _latency_b1(stages: dict, sizes: dict) -> tuple[Any, str, str]:
    rows = [r for r in bench_rows(stages) if r["resolution"] == sizes["resolution"]]
    best = _best([r for r in rows if r["batch"] == 1], "median_ms")
    if best is None:
        return None, "", "not measured: " + _stage_note(stages, ("bench_eager", "bench_compile"))
    return best["median_ms"], _variant(best), ""


def _mfu_b8(stages: dict, sizes: dict) -> tuple[Any, str, str]:
    rows = [
        r
        for r in bench_rows(stages)
        if r["resolution"] == sizes["resolution"] and r["batch"] == sizes["batch"]
    ]
    best = _best(rows, "mfu", max)
    if best is None:
        return None, "", "not measured: " + _stage_note(stages, ("bench_eager", "bench_compile"))
    return best["mfu"], _variant(best) + f" vs {best['peak_key']}", ""


def _speedup(stages: dict, sizes: dict) -> tuple[Any, str, str]:
    res = sizes["resolution"]
    dift = [d for d in dift_rows(stages) if d["resolution"] == res]
    best = _best([r for r in bench_rows(stages) if r["resolution"] == res], "ms_per_image")
    if not dift or best is None:
        return None, "", "not measured: " + _stage_note(stages, ("bench_eager",))
    value = dift[0]["ms_per_image"] / best["ms_per_image"]
    return value, f"DIFT ×{dift[0]['ensemble']} fp32 b1 ÷ {_variant(best)} (per image)", ""


def _matcher_row(stages: dict, sizes: dict) -> dict | None:
    k, side, c, out = sizes["matcher"]
    for r in (stages.get("matcher", {}).get("results") or {}).get("rows", []):
        match = (r["k"], r["map"], r["channels"], r["out"]) == (k, side, c, out)
        if match and r["method"] == "triton" and r.get("status") == "ok":
            return r
    return None


def _matcher_ms(stages: dict, sizes: dict) -> tuple[Any, str, str]:
    r = _matcher_row(stages, sizes)
    if r is None:
        return None, "", "not measured: " + _stage_note(stages, ("matcher",))
    return r["median_s"] * 1e3, f"triton {r['dtype']}", ""


def _matcher_mb(stages: dict, sizes: dict) -> tuple[Any, str, str]:
    r = _matcher_row(stages, sizes)
    if r is None:
        return None, "", "not measured: " + _stage_note(stages, ("matcher",))
    return r["peak_extra_bytes"] / 2**20, f"triton {r['dtype']}", ""


def _tracking_fps(stages: dict, sizes: dict) -> tuple[Any, str, str]:
    runs = (stages.get("tracking", {}).get("results") or {}).get("runs", {})
    full = runs.get("full")
    if not full or full.get("fps") is None:
        return None, "", "not measured: " + _stage_note(stages, ("tracking",))
    note = f"full search, {full['points']} points, {full['resolution']}², {full['dtype']}"
    radius = runs.get("radius")
    if radius and radius.get("fps") is not None:
        note += f" (radius {radius['radius']:g} px: {radius['fps']:.1f} FPS)"
    return full["fps"], note, ""


# key → (description, target, comparison, unit, measure(stages, sizes) → (value, source, why))
TARGETS: dict[str, tuple[str, float, str, str, Callable]] = {
    "extract_768_us6_b1_latency_ms": (
        "768² us6 extraction at batch 1 (best backend), median latency",
        8.0,
        "<=",
        "ms",
        _latency_b1,
    ),
    "extract_768_us6_b8_mfu": (
        "MFU at batch 8, 768² us6 (best backend; FLOPs ÷ time ÷ measured matmul peak)",
        0.5,
        ">=",
        "fraction",
        _mfu_b8,
    ),
    "speedup_vs_dift_768": (
        "CleanDIFT vs DIFT (ensemble 8, fp32) per image at 768² us6",
        50.0,
        ">=",
        "×",
        _speedup,
    ),
    "matcher_k4096_48x1280_to_768_ms": (
        "matcher K=4096, 48²×1280 → 768² (Triton), median time",
        1.0,
        "<=",
        "ms",
        _matcher_ms,
    ),
    "matcher_k4096_48x1280_to_768_peak_mb": (
        "matcher K=4096, 48²×1280 → 768² (Triton), peak extra memory",
        64.0,
        "<=",
        "MiB",
        _matcher_mb,
    ),
    "tracking_512_256pts_fps": (
        "tracking at 512² with 256 points, end-to-end FPS",
        100.0,
        ">=",
        "FPS",
        _tracking_fps,
    ),
}
TARGET_KEYS = tuple(TARGETS)


def evaluate_targets(stages: dict, dry_run: bool) -> dict[str, dict]:
    """Every target with its measured value and whether it is met. In a dry run the value comes
    from the tiny CPU stand-in configuration and ``met`` is None (with the reason)."""
    sizes = DRY_SIZES if dry_run else GPU_SIZES
    out = {}
    for key, (description, goal, comparison, unit, measure) in TARGETS.items():
        value, source, why = measure(stages, sizes)
        if value is None:
            met = None
        elif dry_run:
            met, why = None, "dry run: CPU, tiny model and sizes, not the target configuration"
        else:
            met = bool(value <= goal if comparison == "<=" else value >= goal)
        out[key] = {
            "description": description,
            "measured": value,
            "target": goal,
            "comparison": comparison,
            "unit": unit,
            "met": met,
            "reason": why,
            "source": source,
        }
    return out


# ------------------------------------------------------------------------------ validation


def validate_report(report: dict, strict: bool = False) -> list[str]:
    """Problems with ``report`` (empty when it follows the schema). ``strict``: also a problem
    when a stage failed, or timed out within its own budget (the dry run in CI must run every
    stage cleanly; a stage cut short by the total budget on a loaded machine is not a defect)."""
    problems = [f"missing top-level key '{k}'" for k in TOP_KEYS if k not in report]
    if report.get("schema") != SCHEMA:
        problems.append(f"schema is {report.get('schema')!r}, not {SCHEMA!r}")
    for name, stage in (report.get("stages") or {}).items():
        status = stage.get("status")
        if status not in STATUSES:
            problems.append(f"stage {name}: status {status!r} not in {STATUSES}")
        if not isinstance(stage.get("seconds"), (int, float)):
            problems.append(f"stage {name}: no seconds")
        if status != "ok" and not stage.get("reason"):
            problems.append(f"stage {name}: status {status} without a reason")
        if status == "failed" and not (stage.get("error") or {}).get("message"):
            problems.append(f"stage {name}: failed without an error message")
        cut = status == "timeout" and stage.get("budget_cut_by_total")
        if strict and status in BAD_STATUSES and not cut:
            problems.append(f"stage {name} {status}: {stage.get('reason')}")
    if not report.get("stages"):
        problems.append("no stages")
    targets = report.get("targets") or {}
    for key in TARGET_KEYS:
        t = targets.get(key)
        if t is None:
            problems.append(f"target '{key}' missing")
            continue
        problems += [f"target '{key}': no '{f}'" for f in TARGET_FIELDS if f not in t]
        if t.get("met") not in (True, False, None):
            problems.append(f"target '{key}': met must be true, false or null")
        if t.get("met") is None and not t.get("reason"):
            problems.append(f"target '{key}': met is null without a reason")
    return problems


# ------------------------------------------------------------------------------ Markdown


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def markdown(report: dict) -> str:
    """The report as Markdown: machine, targets, stages, then each stage's figures."""
    hw, drv, ver = report.get("hardware", {}), report.get("driver", {}), report.get("versions", {})
    lines = [
        f"# GPU suite ({report['mode']}) — {report.get('finished_utc', '')}",
        "",
        f"`{report.get('command', '')}` · commit {report.get('git_commit') or '–'} · "
        f"{report['total_seconds']:.0f} s of {report['total_budget_s']:.0f} s budget",
        "",
        f"**Hardware**: {hw.get('gpu') or hw.get('cpu', '–')}"
        + (f", {hw['gpu_memory_gib']:.0f} GiB" if hw.get("gpu_memory_gib") else "")
        + (f", cc {hw['compute_capability']}" if hw.get("compute_capability") else "")
        + f"; CPU {hw.get('cpu', '–')} ×{hw.get('cpu_count', '–')}",
        "",
        "**Measured peaks**: "
        + (", ".join(f"{k} {_fmt(v)}" for k, v in (hw.get("peaks") or {}).items()) or "–"),
        "",
        "**Driver**: " + (", ".join(f"{k} {v}" for k, v in drv.items()) or "–"),
        "",
        "**Versions**: " + ", ".join(f"{k} {v}" for k, v in ver.items()),
        "",
        "## Targets",
        "",
    ]
    verdict = {True: "**met**", False: "**missed**", None: "–"}
    lines += _table(
        ["target", "measured", "goal", "met", "source / reason"],
        [
            [
                t["description"],
                (_fmt(t["measured"], 4) + f" {t['unit']}") if t["measured"] is not None else "–",
                f"{t['comparison']} {_fmt(t['target'])} {t['unit']}",
                verdict[t["met"]],
                "; ".join(x for x in (t.get("source"), t.get("reason")) if x),
            ]
            for t in report["targets"].values()
        ],
    )
    lines += ["## Stages", ""]
    lines += _table(
        ["stage", "status", "seconds", "budget s", "reason / error"],
        [
            [
                name,
                s["status"],
                round(s["seconds"], 1),
                s.get("budget_s"),
                s.get("reason") or (s.get("error") or {}).get("message", ""),
            ]
            for name, s in report["stages"].items()
        ],
    )
    stages = report["stages"]
    rows = bench_rows(stages)
    if rows or dift_rows(stages):
        lines += ["## Extraction (bench)", ""]
        lines += _table(
            [
                "variant",
                "res",
                "batch",
                "median ms",
                "p90 ms",
                "ms/img",
                "MFU",
                "peak MiB",
                "×DIFT",
            ],
            [
                [
                    f"DIFT×{d['ensemble']} fp32",
                    d["resolution"],
                    d["batch"],
                    d["median_ms"],
                    d["p90_ms"],
                    d["ms_per_image"],
                    d.get("mfu"),
                    d.get("peak_memory_mib"),
                    1.0,
                ]
                for d in dift_rows(stages)
            ]
            + [
                [
                    r["variant"],
                    r["resolution"],
                    r["batch"],
                    r["median_ms"],
                    r["p90_ms"],
                    r["ms_per_image"],
                    r.get("mfu"),
                    r.get("peak_memory_mib"),
                    r.get("speedup_vs_dift"),
                ]
                for r in rows
            ],
        )
    matcher = (stages.get("matcher", {}).get("results") or {}).get("rows", [])
    cpp = (stages.get("cpp_matcher", {}).get("results") or {}).get("rows", [])
    if matcher or cpp:
        lines += ["## Matcher", ""]
        lines += _table(
            ["K", "map", "C", "→ out", "method", "median ms", "peak MiB", "parity vs naive"],
            [
                [
                    r["k"],
                    f"{r['map']}²",
                    r["channels"],
                    r["out"],
                    r["method"],
                    r["median_s"] * 1e3 if r.get("status") == "ok" else r.get("status"),
                    r["peak_extra_bytes"] / 2**20
                    if r.get("peak_extra_bytes") is not None
                    else None,
                    r.get("parity", ""),
                ]
                for r in matcher + cpp
            ],
        )
    tracking = (stages.get("tracking", {}).get("results") or {}).get("runs", {})
    if tracking:
        lines += ["## Tracking", ""]
        lines += _table(
            [
                "run",
                "res",
                "points",
                "FPS",
                "total p50 ms",
                "p90",
                "p99",
                "extract p50",
                "match p50",
            ],
            [
                [
                    name,
                    r["resolution"],
                    r["points"],
                    r["fps"],
                    r["latency_ms"].get("total", {}).get("p50"),
                    r["latency_ms"].get("total", {}).get("p90"),
                    r["latency_ms"].get("total", {}).get("p99"),
                    r["latency_ms"].get("extract", {}).get("p50"),
                    r["latency_ms"].get("match", {}).get("p50"),
                ]
                for name, r in tracking.items()
            ],
        )
    training = (stages.get("training", {}).get("results") or {}).get("results", [])
    if training:
        res = stages["training"]["results"]
        lines += [
            f"## Distillation step ({res['teacher']}, {res['resolution']}², batch "
            f"{res['batch_size']} × {res['bins']} bins)",
            "",
        ]
        lines += _table(
            ["precision", "compile", "step ms", "images/s", "peak GiB", "MFU (bf16 peak)"],
            [
                [
                    r["precision"],
                    r["compile"],
                    r["step_s_median"] * 1e3,
                    r["images_per_s"],
                    r["peak_memory_gib"],
                    r.get("mfu_vs_bf16_peak"),
                ]
                for r in training
            ],
        )
    tests = (stages.get("gpu_tests", {}).get("results") or {}).get("summary")
    if tests:
        lines += ["## GPU-marked tests", "", ", ".join(f"{k} {v}" for k, v in tests.items()), ""]
    return "\n".join(lines)
