"""bench/pipeline_bench.py's measurements as a Markdown table and a plot
(bench/pipeline-results.png; matplotlib from the bench venv, which has it):

    bench/cache/openvino-venv/bin/python bench/pipeline_report.py   # prints the Markdown
"""
from __future__ import annotations

import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DATA = BENCH / "cache" / "pipeline-bench.json"
PLOT = BENCH / "pipeline-results.png"
LABELS = {"torch": "torch", "openvino": "OpenVINO", "fastsd": "FastSD CPU's recipe"}
DECODERS = {"full": "full VAE", "tiny": "TAESD"}


def label(row: dict) -> str:
    """`OpenVINO + TAESD` and the like."""
    if row["engine"] == "fastsd":
        return "FastSD CPU's recipe (optimum-intel + TAESD, OpenVINO)"
    return f"{LABELS[row['engine']]} + {DECODERS[row['decoder']]}"


def precision(row: dict) -> str:
    """What ran in which precision, short."""
    info = row.get("engine_info_after") or row.get("engine_info") or {}
    if row["engine"] == "openvino" and info.get("parts"):
        kinds = {p.get("precision") for n, p in info["parts"].items() if n != "vae_encoder"}
        return "OpenVINO " + "/".join(sorted(k for k in kinds if k))
    text = str(row.get("precision") if row["engine"] == "fastsd" else row.get("dtype", ""))
    return text.replace("<Type: '", "").replace("'>", "")


def table(data: dict) -> list[str]:
    """The Markdown table, one line per row."""
    lines = [f"| Architecture | Row | s per image, median of {data['images'] - 1} (fastest of "
             f"all {data['images']}) | first image s | load s | peak RSS GiB | peak RssAnon GiB "
             "| precision | load avg (1 min) before -> after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in data["rows"].items():
        if "error" in row:
            lines.append(f"| {row['arch']} | {label(row)} | error: "
                         f"{row['error'].strip().splitlines()[-1][:160]} |||||||")
            continue
        lines.append(
            f"| {row['arch']} | {label(row)} | **{row['image_s']:.2f}** "
            f"({min(row['images_s']):.2f}) | "
            f"{row['first_image_s']:.2f} | {row['load_s']:.1f} | {row['peak_rss_gib']:.2f} | "
            f"{row['peak_anon_gib']:.2f} | {precision(row)} | "
            f"{row['loadavg_before'][0]:.1f} -> {row['loadavg_after'][0]:.1f} |")
    return lines


def plot(data: dict) -> None:
    """Seconds per image and peak memory, one bar per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [(n, r) for n, r in data["rows"].items() if "error" not in r]
    names = [f"{r['arch']}: {label(r)}" for _, r in ok]
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 0.38 * len(ok) + 2))
    y = list(range(len(ok)))
    colours = {"torch": "tab:blue", "openvino": "tab:green", "fastsd": "tab:gray"}
    a.barh(y, [r["image_s"] for _, r in ok], color=[colours[r["engine"]] for _, r in ok])
    for i, (_, r) in enumerate(ok):
        a.text(r["image_s"], i, f" {r['image_s']:.2f} s", va="center", fontsize=8)
    a.set_yticks(y, names, fontsize=8)
    a.invert_yaxis()
    a.set_xlabel(f"seconds per 512x512 image, 1 step (lower is better); {data['cpu']}, 2 cores")
    b.barh([i - 0.2 for i in y], [r["peak_rss_gib"] for _, r in ok], height=0.4,
           label="peak RSS (incl. mapped files)", color="tab:gray")
    b.barh([i + 0.2 for i in y], [r["peak_anon_gib"] for _, r in ok], height=0.4,
           label="peak RssAnon", color="tab:orange")
    b.axvline(1.2, color="red", linestyle="--", linewidth=1, label="1.2 GiB (torch goal)")
    b.set_yticks(y, [])
    b.invert_yaxis()
    b.set_xlabel("GiB")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)
    plt.close(fig)


def main() -> None:
    """Print the table (and the export figures) and write the plot."""
    data = json.loads(DATA.read_text())
    print("\n".join(table(data)))
    print()
    for name, row in data.get("prepare", {}).items():
        exported = (row.get("engine_info") or {}).get("export_seconds") or row.get("export_s")
        if exported or row.get("error"):
            print(f"- {name}: first load {row.get('load_s')} s, export {exported}"
                  + (f", error {row['error'][-200:]!r}" if row.get("error") else ""))
    plot(data)


if __name__ == "__main__":
    main()
