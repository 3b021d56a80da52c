"""Tracking defaults that the CLI reads without importing torch."""

#: the tracker's sub-pixel refinement: "quadratic" lowered the jitter of tracks on a held-out
#: photo (static with sensor noise, and sub-pixel pans) in all 8 cases measured, more than
#: "softargmax" and at a fraction of its cost (benchmarks/results/TRACKING.md)
TRACK_REFINE = "quadratic"
