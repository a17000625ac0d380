"""A pool sample as a PNG for the person to judge: images as they are, other inputs as a small plot.

Images ([H, W, 1] or [H, W, 3]) go out at their own resolution; the page scales them up
without smoothing. Their brightness is the dataset's: bytes as they are, other values over
the pool's range, so that samples compare with each other. Anything else (a feature
vector, a stack of channels) is drawn flattened, value against position, on axes the
same for every sample.
"""

from __future__ import annotations

import functools
import io

import numpy as np

PLOT_SIZE = (4.8, 1.8)  # inches at 100 dpi: a plot about as wide as an upscaled image


class Renderer:
    """PNGs of a pool's samples; the last few thousand are kept, so that going back costs nothing."""

    def __init__(self, raw: np.ndarray):
        self.raw = raw
        shape = raw.shape[1:]
        self.image = len(shape) == 3 and shape[-1] in (1, 3)
        if raw.dtype == np.uint8:
            self.low, self.high = 0.0, 255.0
        else:
            self.low, self.high = float(np.min(raw)), float(np.max(raw))
        self.high = max(self.high, self.low + 1e-12)  # a constant input: any non-empty range
        self.png = functools.lru_cache(maxsize=4096)(self._png)

    def _png(self, index: int) -> bytes:
        sample = np.asarray(self.raw[index], np.float64)
        buffer = io.BytesIO()
        if self.image:
            import matplotlib.image

            scaled = np.clip((sample - self.low) / (self.high - self.low), 0, 1)
            pixels = scaled[..., 0] if sample.shape[-1] == 1 else scaled
            matplotlib.image.imsave(buffer, pixels, cmap="gray", vmin=0, vmax=1, format="png")
        else:
            _plot(sample.ravel(), (self.low, self.high), buffer)
        return buffer.getvalue()


def _plot(values: np.ndarray, limits: tuple[float, float], out: io.BytesIO) -> None:
    # The object-oriented API: no pyplot state, so requests in several threads do not share a figure.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=PLOT_SIZE, dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.07, 0.14, 0.91, 0.8))
    positions = np.arange(len(values))
    axes.bar(positions, values, width=1.0, color="#3b6ea5")
    axes.set_xlim(-0.5, len(values) - 0.5)
    axes.set_ylim(min(limits[0], 0), limits[1])
    axes.tick_params(labelsize=7)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    figure.savefig(out, format="png")
