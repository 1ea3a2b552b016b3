"""Compare one configuration across results JSONs of `benchmarks/learning.py` runs that differ
in one setting (e.g. `--jpeg_quality 90 / 75 / 60`), paired by (seed, world).

    python -m benchmarks.compare_runs q90.json q75.json q60.json [--config "both + confusion"]
        [--label jpeg_quality]

The first JSON is the reference. For every other one, each metric's difference to the
reference is paired by (training seed, world): mean and 95% t-interval half-width
(`learning.paired_difference`), marked `*` when the interval excludes 0 and the difference
exceeds 2 trial-sampling standard errors. Rows show each run's mean ± 95% interval.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from benchmarks import learning

KEYS = (("sync_top1", "sync@1"), ("sync_offset_acc", "sync-off"), ("sv_eer", "SV EER"),
        ("xmodal_eer", "F-V EER"), ("content_probe_mlp_audio_identity", "unit|a-id MLP"),
        ("identity_probe_mlp_audio_content", "id|a-c MLP"))


def load_row(path: str, config: str) -> tuple[dict, dict]:
    """(payload, the summarised row of `config` in its first table). ValueError if absent."""
    with open(path) as f:
        payload = json.load(f)
    for row in payload["tables"][0]["rows"]:
        if row["config"] == config:
            return payload, row
    raise ValueError(f"{path}: no row {config!r}")


def compare(paths: list[str], config: str, label: str) -> str:
    """The comparison table as text (see module doc)."""
    loaded = [load_row(p, config) for p in paths]
    ref_runs = loaded[0][1]["runs"]
    lines = [f"{config}: mean ± 95% interval over seeds x worlds; Δ vs {label}="
             f"{loaded[0][0].get(label)} paired by seed x world (* = beyond its spread)",
             f"{label:<14}{'n':>3}" + "".join(f"{h:>16}" for _, h in KEYS)
             + "".join(f"{'Δ ' + h:>18}" for _, h in KEYS[:4])]
    for payload, row in loaded:
        line = f"{str(payload.get(label)):<14}{row['n']:>3}"
        for key, _ in KEYS:
            if key not in row["mean"]:
                line += f"{'-':>16}"
                continue
            ci = row["ci95"].get(key)
            line += f"{100 * row['mean'][key]:>10.1f}" + (
                f"±{100 * ci:<5.1f}" if ci is not None and np.isfinite(ci) else " " * 6)
        if row["runs"] is not ref_runs:
            for key, _ in KEYS[:4]:
                if key not in row["mean"] or key not in loaded[0][1]["mean"]:
                    line += f"{'-':>18}"
                    continue
                d = learning.paired_rows(row, loaded[0][1], key)
                cell = (f"{100 * d['mean']:+.1f}±{100 * d['ci95']:.1f}"
                        + ("*" if d["significant"] else ""))
                line += f"{cell:>18}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jsons", nargs="+", help="results JSONs; the first is the reference")
    p.add_argument("--config", default="both + confusion", help="the row to compare")
    p.add_argument("--label", default="jpeg_quality",
                   help="the payload field that tells the runs apart")
    args = p.parse_args(argv)
    try:
        print(compare(args.jsons, args.config, args.label))
    except (OSError, ValueError, KeyError) as err:
        p.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
