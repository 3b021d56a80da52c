"""Feature tap names and where they sit in an SD-layout U-Net.

Taps follow the CleanDIFT reference: ``mid`` is the mid-block output; inside up-block ``b``
the output after resnet(+attention) ``i`` is tap ``us{b * n + i + 1}`` (``n`` resnets per
up-block), and a block's last tap is taken after its upsampler. DIFT's ``up_ft_index`` k is the
output of up-block k, aliased ``up{k}`` (``up1`` = ``us6`` for SD).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import TapError


@dataclass(frozen=True)
class TapSpec:
    """Where a tap is read and what it holds.

    block: up-block index, or -1 for ``mid``; position: resnet index inside the block;
    channels: C of the tap; stride: image pixels per feature cell (8 × the latent stride).
    """

    name: str
    block: int
    position: int
    channels: int
    stride: int

    @property
    def order(self) -> tuple[int, int]:
        """Execution order key: taps with a larger key run later in the U-Net."""
        return (self.block, self.position)


class TapLayout:
    """All taps of a U-Net config (diffusers ``UNet2DConditionModel.config`` or a dict)."""

    def __init__(self, unet_config, vae_stride: int = 8):
        cfg = dict(unet_config)
        widths = list(cfg["block_out_channels"])
        n_blocks = len(cfg["up_block_types"])
        per_block = cfg["layers_per_block"] + 1
        self.per_block = per_block
        mid_stride = vae_stride * 2 ** (n_blocks - 1)
        specs = {"mid": TapSpec("mid", -1, 0, widths[-1], mid_stride)}
        for b, channels in enumerate(reversed(widths)):
            stride = mid_stride // 2**b
            for i in range(per_block):
                upsampled = i == per_block - 1 and b < n_blocks - 1  # block output after upsampler
                name = f"us{b * per_block + i + 1}"
                specs[name] = TapSpec(name, b, i, channels, stride // 2 if upsampled else stride)
        self.specs = specs
        # DIFT's up_ft_index k = output of up-block k
        self.aliases = {f"up{b}": f"us{(b + 1) * per_block}" for b in range(n_blocks)}

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def resolve(self, taps: str | Iterable[str]) -> tuple[str, ...]:
        """Canonical, de-duplicated tap names in the caller's order; aliases resolved.

        Accepts a comma-separated string or an iterable. Unknown names raise TapError.
        """
        if isinstance(taps, str):
            taps = [t for t in taps.split(",")]
        out: list[str] = []
        for raw in taps:
            name = raw.strip().lower()
            name = self.aliases.get(name, name)
            if name not in self.specs:
                valid = ", ".join(self.names + list(self.aliases))
                raise TapError(f"unknown tap '{raw.strip()}' (valid: {valid})")
            if name not in out:
                out.append(name)
        if not out:
            raise TapError("no tap requested")
        return tuple(out)

    def deepest(self, taps: Iterable[str]) -> TapSpec:
        """The tap that runs last; nothing after it needs to run."""
        return max((self.specs[t] for t in taps), key=lambda s: s.order)
