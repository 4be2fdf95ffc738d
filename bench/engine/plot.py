#!/usr/bin/env python3
"""plot.py - PNG plots of engine.py's CSV: TTFT and loaded TPOT against link rate, one line
per mode, one panel per load level.

    python3 bench/engine/plot.py docs/results/engine.csv docs/results/

writes engine-ttft.png, engine-tpot.png and engine-tpot-ratio.png (loaded TPOT over the
same decode steps replayed without fetches) next to the CSV (or into the given folder).
recompute does not use the link: it is drawn as a flat dashed line at its measured value.
TTFT is drawn on a log scale (raw at slow links is 10-40x the others).
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

STYLE = {"recompute": ("k", "--"), "raw": ("tab:gray", "-"), "gpu-decode": ("tab:red", "-"),
         "cpu-inline": ("tab:orange", "-"), "shadow": ("tab:blue", "-")}


def load(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def value(r, key):
    if key == "tpot_ratio":      # loaded TPOT over the same steps without fetches
        return float(r["tpot_loaded_mean_ms"]) / float(r["tpot_nofetch_mean_ms"])
    return float(r[key])


def panel(ax, rows, load, key, scale, ylabel, links):
    for mode, (color, ls) in STYLE.items():
        pts = sorted((float(r["link_gbps"]), value(r, key) * scale) for r in rows
                     if r["mode"] == mode and float(r["load_rps"]) == load)
        pts = [p for p in pts if p[1] == p[1]]          # drop NaN
        if not pts:
            continue
        if mode == "recompute":
            ax.plot(links, [pts[0][1]] * len(links), color=color, ls=ls, label=mode)
        else:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, ls=ls,
                    marker="o", label=mode)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if key.startswith("ttft"):
        ax.set_yscale("log")
    ax.set_xticks(links)
    ax.set_xticklabels(["%g" % x for x in links])
    ax.set_xlabel("link (Gbit/s)")
    ax.set_ylabel(ylabel)
    ax.set_title("load %g req/s" % load if load > 0 else "all requests at t=0")
    ax.grid(True, alpha=0.3)


def main(argv):
    rows = load(argv[1])
    out = argv[2] if len(argv) > 2 else os.path.dirname(os.path.abspath(argv[1]))
    loads = sorted({float(r["load_rps"]) for r in rows})
    links = sorted({float(r["link_gbps"]) for r in rows if r["mode"] != "recompute"})
    for name, key, scale, ylabel in (("engine-ttft.png", "ttft_mean_s", 1.0, "mean TTFT (s)"),
                                     ("engine-tpot.png", "tpot_loaded_mean_ms", 1.0,
                                      "loaded TPOT (ms)"),
                                     ("engine-tpot-ratio.png", "tpot_ratio", 1.0,
                                      "loaded TPOT / same steps without fetches")):
        fig, axes = plt.subplots(1, len(loads), figsize=(5.5 * len(loads), 4), squeeze=False)
        for ax, ld in zip(axes[0], loads):
            panel(ax, rows, ld, key, scale, ylabel, links)
            if key == "tpot_ratio":
                ax.axhline(1.05, color="tab:blue", ls=":", lw=1, label="+5% (target)")
            if key == "tpot_loaded_mean_ms":
                # The same steps with no fetch in flight (fit), for shadow: the 5% bar.
                pts = sorted((float(r["link_gbps"]), float(r["tpot_nofetch_mean_ms"]))
                             for r in rows if r["mode"] == "shadow" and
                             float(r["load_rps"]) == ld)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:blue",
                            ls=":", label="shadow, same steps without fetches")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
