"""The files `explain` writes for a person to look at: Grad-CAM overlays (2D, and three planes of a 3D
volume), the sanity-check panel, a signal with its attributions under it, tokens coloured by their
attribution (HTML), and the global importance bars. Matplotlib `Figure`s, saved without pyplot state."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

CAM_ALPHA = 0.4


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path.name


def _picture(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(H, W) grey or (H, W, 3) colour from a (C, H, W) image in [0, 1], and its colour map."""
    if image.shape[0] == 3:
        return np.clip(image.transpose(1, 2, 0), 0, 1), None
    return image[0], "gray"


def planes(volume: np.ndarray, cam: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Three orthogonal slices of a (C, D, H, W) volume and its (D, H, W) map, through the map's maximum."""
    d, h, w = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return [(f"axial {d}", volume[:, d], cam[d]), (f"coronal {h}", volume[:, :, h], cam[:, h]),
            (f"sagittal {w}", volume[:, :, :, w], cam[:, :, w])]


def cam_overlay(image: np.ndarray, cam: np.ndarray, title: str, path: Path) -> str:
    """The input with its map over it (jet, alpha 0.4); a 3D volume as three planes. Returns the file name."""
    views = planes(image, cam) if cam.ndim == 3 else [("", image, cam)]
    fig = Figure(figsize=(3.2 * len(views), 3.4))
    for i, (name, picture, heat) in enumerate(views):
        ax = fig.add_subplot(1, len(views), i + 1)
        shown, cmap = _picture(picture)
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=1)
        ax.imshow(heat, cmap="jet", alpha=CAM_ALPHA, vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def sanity_panel(images: np.ndarray, trained: np.ndarray, randomised: np.ndarray, rho: np.ndarray,
                 names: list[str], path: Path) -> str:
    """Rows of (input, trained model's map, randomised model's map), Spearman's rho in the last title."""
    rows = len(images)
    fig = Figure(figsize=(7.5, 2.5 * rows))
    for r in range(rows):
        image, cams = images[r], (trained[r], randomised[r])
        if cams[0].ndim == 3:  # a volume: the axial slice through the trained map's maximum
            d = int(np.unravel_index(int(np.argmax(cams[0])), cams[0].shape)[0])
            image, cams = image[:, d], (cams[0][d], cams[1][d])
        shown, cmap = _picture(image)
        titles = [names[r], "trained", f"randomised (rho={rho[r]:.2f})"]
        for c in range(3):
            ax = fig.add_subplot(rows, 3, 3 * r + c + 1)
            ax.imshow(shown, cmap=cmap, vmin=0, vmax=1)
            if c:
                ax.imshow(cams[c - 1], cmap="jet", alpha=CAM_ALPHA, vmin=0, vmax=1)
            ax.set_title(titles[c], fontsize=8)
            ax.axis("off")
    return _save(fig, path)


def signal_plot(signal: np.ndarray, attribution: np.ndarray, title: str, path: Path) -> str:
    """The recording (C, T), one line per channel, with its integrated gradients per sample under it."""
    fig = Figure(figsize=(8, 4))
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    t = np.arange(signal.shape[-1])
    for c in range(signal.shape[0]):
        top.plot(t, signal[c], lw=0.8, label=f"channel {c}" if signal.shape[0] > 1 else None)
        total = attribution[c]
        bottom.fill_between(t, 0, total, where=total >= 0, color="tab:red", alpha=0.6, step="mid")
        bottom.fill_between(t, 0, total, where=total < 0, color="tab:blue", alpha=0.6, step="mid")
    if signal.shape[0] > 1:
        top.legend(fontsize=7)
    top.set_title(title, fontsize=9)
    top.set_ylabel("signal")
    bottom.set_ylabel("attribution")
    bottom.set_xlabel("sample")
    return _save(fig, path)


def importance_plot(importance, path: Path) -> str:
    """Horizontal bars: the mean score drop per original column (most important on top), std as error bars."""
    ordered = importance.iloc[::-1]
    fig = Figure(figsize=(6, 0.35 * len(ordered) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(ordered["column"], ordered["mean_drop"], xerr=ordered["std_drop"], color="tab:blue", alpha=0.8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("AUC drop when the column is permuted")
    return _save(fig, path)


def token_html(rows: list[tuple[str, list[str], np.ndarray]], title: str) -> str:
    """One paragraph per text, each token's background red (raises the explained class's probability)
    or blue (lowers it), its opacity the share of the text's largest attribution."""
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
             "<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto}"
             "span{padding:1px 2px;margin:1px;border-radius:3px;display:inline-block}</style></head><body>",
             f"<h1>{e(title)}</h1><p>Red: the token raises the explained class's probability; blue: it lowers "
             "it (integrated gradients over the token embeddings).</p>"]
    for heading, tokens, attr in rows:
        top = float(np.abs(attr).max()) or 1.0
        spans = []
        for token, a in zip(tokens, attr):
            colour = "220,40,40" if a >= 0 else "40,90,220"
            spans.append(f'<span title="{a:+.4f}" style="background:rgba({colour},{abs(a) / top:.2f})">'
                         f"{e(token)}</span>")
        parts.append(f"<h3>{e(heading)}</h3><p>{''.join(spans)}</p>")
    return "\n".join(parts) + "\n</body></html>\n"
