"""Train every arch on synthetic-nyud with one budget and tabulate params, GFLOPs, metrics, delta_m.

    python benchmarks/arch_table.py --steps 250 --out runs/table   # writes runs/table/TABLE.md

Each row is one ``mtlkit train`` command (printed in the table); delta_m (MTI-Net eq. 2) is taken
against the ``single`` runs of each task with the same backbone, data and budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TASKS = ["semseg", "depth", "normals", "edge"]
ARCHS = ["baseline", "padnet", "mtinet", "tpim", "bfci", "tif", "mtcp"]


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--out", default="runs/table")
    ap.add_argument("--archs", default=",".join(ARCHS))
    args = ap.parse_args()
    out = Path(args.out)
    exe = [sys.executable, "-m", "cli.main", "train", "--steps", str(args.steps), "--quiet",
           "--eval-every", "0", "--ckpt-every", str(args.steps)]
    cmds: dict[str, list[str]] = {}
    for t in TASKS:
        cmds[f"single:{t}"] = ["--arch", "single", "--tasks", t, "--out", str(out / f"single-{t}")]
    for a in args.archs.split(","):
        cmds[a] = ["--arch", a, "--out", str(out / a)]
    for c in cmds.values():
        if not (Path(c[-1]) / "report.json").is_file():
            run(exe + c)

    from mtlkit.metrics.delta_m import delta_m
    from mtlkit.models.factory import model_summary

    single = {}
    for t in TASKS:
        single[t] = json.loads((out / f"single-{t}" / "report.json").read_text())["metrics"][t]
    tasks = {"semseg": 9, "depth": 1, "normals": 3, "edge": 1}
    lines = [
        f"| arch | params (M) | GFLOPs (128x160) | semseg mIoU (%) | depth rmse (m) | normals mean "
        f"(deg) | edge odsF (%) | delta_m vs single (%) | command (+ `--steps {args.steps}`) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    row = "| {} | {:.2f} | {:.2f} | {:.2f} | {:.4f} | {:.2f} | {:.2f} | {} | `{}` |"
    s1 = model_summary("single", {"semseg": 9})
    lines.append(row.format(
        "single (x4)", 0, 0, single["semseg"]["mIoU"], single["depth"]["rmse"],
        single["normals"]["mean"], single["edge"]["odsF"], "0 (reference)",
        "mtlkit train --arch single --tasks <task>",
    ).replace("| 0.00 | 0.00 |", f"| 4 x {s1['params_M']:.2f} | 4 x {s1['gflops']:.2f} |"))
    for a in args.archs.split(","):
        rep = json.loads((out / a / "report.json").read_text())
        m = rep["metrics"]
        s = model_summary(a, tasks)
        dm = delta_m(m, single)
        lines.append(row.format(
            a, s["params_M"], s["gflops"], m["semseg"]["mIoU"], m["depth"]["rmse"],
            m["normals"]["mean"], m["edge"]["odsF"], f"{dm:+.2f}", f"mtlkit train --arch {a}",
        ))
    text = "\n".join(lines) + "\n"
    (out / "TABLE.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
