"""A report as the text `cvae eval` prints: a per-frame table and the means with their 95% intervals."""

from __future__ import annotations

import math

TITLES = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "motion_psnr": "motion PSNR", "pixel_std": "pixel std",
          "lpips_diversity": "LPIPS diversity"}
UNITS = {"psnr": " dB", "motion_psnr": " dB"}


def _columns(report: dict) -> list[tuple[str, str]]:
    n, names = report["samples"], report["protocol"]["metrics"]
    names = [m for m in names if m in report["per_frame"]]
    columns = []
    for m in names:
        columns += [(f"best{n} {TITLES[m]}", m), (f"mean{n} {TITLES[m]}", f"{m}_mean"), (f"copy {TITLES[m]}",
                                                                                       f"baseline_{m}")]
    columns += [("best motion", "motion_psnr"), ("copy motion", "baseline_motion_psnr")]
    return columns


def _number(value: float, width: int = 13) -> str:
    return f"{'-':>{width}s}" if value is None or math.isnan(value) else f"{value:{width}.4f}"


def _short(value: float) -> str:
    """4 decimals, or 3 significant digits for values below 0.01 (the pixel diversity)."""
    return f"{value:.4f}" if math.isnan(value) or abs(value) >= 0.01 or value == 0 else f"{value:.3g}"


def summary_lines(report: dict) -> list[str]:
    """One line per value: its mean ± 95% interval over videos (what a paper's table gives)."""
    n, mean, ci = report["samples"], report["mean"], report["ci"]
    lines = []
    for key in mean:
        base = key.removeprefix("baseline_").removesuffix("_mean")
        what = ("copy-last-frame" if key.startswith("baseline_") else f"mean of {n}" if key.endswith("_mean")
                else f"best of {n}" if base in ("psnr", "ssim", "lpips", "motion_psnr") else "over samples")
        lines.append(f"  {TITLES.get(base, base):>16s} {what:>16s}: {_short(mean[key])} ± {_short(ci[key])}"
                     f"{UNITS.get(base, '')}")
    if report.get("fvd"):
        f = report["fvd"]
        lines.append(f"  {'FVD':>16s} {'':>16s}: {f['fvd']:.2f} ({f['generated']} generated vs {f['real']} real clips)")
    if "psnr_mean" in mean and n > 1:
        lines.append(f"  {'best - mean PSNR':>16s} {f'of {n}':>16s}: {mean['psnr'] - mean['psnr_mean']:.4f} dB "
                     f"(what the samples add over their average)")
    latent = report.get("latent")
    if latent:
        lines.append(f"  {'latent':>16s} {'posterior':>16s}: {latent['active_units']} of {latent['z_dim']} units "
                     f"active (posterior-mean variance > 0.01), KL {latent['kl']:.3f} nats per video, per "
                     f"dimension " + " ".join(f"{v:.3f}" for v in latent["kl_per_dim"]))
    for name, why in report.get("not_computed", {}).items():
        lines.append(f"  {name.upper()} not computed: {why}")
    return lines


def format_table(report: dict) -> str:
    """The report as text: a header naming the protocol, a row per predicted frame (1-based frame numbers),
    the mean row, then every mean with its interval."""
    protocol = report["protocol"]
    n, pf = report["samples"], report["per_frame"]
    first, last = report["n_past"] + 1, report["n_past"] + report["n_future"]
    columns = _columns(report)
    deviation = protocol.get("extra", {}).get("deviation")
    lines = [f"{report['checkpoint']} on {report['split']}: protocol {protocol['name']} ({report['count']} videos, "
             f"{report['n_past']} context frame(s), frames {first}..{last} scored, {n} sample(s) each, best per "
             f"metric)" + (f"; NOT the published protocol: {deviation}" if deviation else ""),
             "frame" + "".join(f"{title:>13s}" for title, _ in columns)]
    for t in range(report["n_future"]):
        lines.append(f"{first + t:5d}" + "".join(_number(pf[k][t]) for _, k in columns))
    lines.append(" mean" + "".join(_number(report["mean"][k]) for _, k in columns))
    return "\n".join(lines + ["means over videos ± 95% interval (1.96 std / sqrt(n)):"] + summary_lines(report))
