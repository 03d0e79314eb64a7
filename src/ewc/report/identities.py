"""The figure of `ewc fisher-check`: the three Fisher quantities per parameter, element by element.

One panel per measured parameter; each point is one element θ_i, at x = E[s_i²] (the Fisher
diagonal of that label choice) and y = Var(s_i) (circles) or −E[∂² log p/∂θ_i²] (crosses). Under
the model's labels every point lies on the diagonal y = x; under the data's labels (the
empirical Fisher) the Hessian's points leave it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ewc.fisher import FisherIdentities
from ewc.report.figures import blank_figure, strategy_colours

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def identities_figure(identities: FisherIdentities) -> Figure:
    """Log-log scatter of Var(s) and −E[∇² log p] against E[s²], per parameter, both label kinds."""
    from matplotlib.ticker import NullFormatter

    names = list(identities.model)
    figure = blank_figure(3.4)
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    model_colour, data_colour = strategy_colours(2)
    for ax, name in zip(axes, names, strict=True):
        for moments, colour, label in (
            (identities.model[name], model_colour, "model's labels"),
            (identities.empirical[name], data_colour, "data's labels"),
        ):
            x = moments.second_moment.flatten().double()
            keep = x > 0
            ax.scatter(x[keep], moments.variance.flatten()[keep], s=9, marker="o",
                       facecolors="none", edgecolors=colour, label=f"Var(s), {label}")  # fmt: skip
            hessian = moments.negative_hessian.flatten()[keep].clamp_min(x[keep].min() * 1e-3)
            ax.scatter(x[keep], hessian, s=12, marker="x", color=colour,
                       label=f"−E[∇² log p], {label}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short decades
        ax.yaxis.set_minor_formatter(NullFormatter())
        low, high = ax.get_xlim()
        ax.plot([low, high], [low, high], color="0.4", lw=0.8, ls="--")
        ax.set_title(name)
        ax.set_xlabel("E[s²] per element")
    axes[0].set_ylabel("Var(s), −E[∇² log p]")
    axes[-1].legend(fontsize=7, loc="upper left")
    return figure
