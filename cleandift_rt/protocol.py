"""DIFT's protocol numbers (FACTS.md), defined once: no torch, so the CLI can show them fast.

``DIFT_TIMESTEP`` is DIFT's timestep; it is also CleanDIFT's initial student timestep, and the
timestep at which CompVis' released ``*_unet`` weights run. ``DIFT_ENSEMBLE`` noisy copies are
averaged per image.
"""

DIFT_TIMESTEP = 261
DIFT_ENSEMBLE = 8
