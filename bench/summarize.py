"""Collect every benchmark's markdown report in bench/results/ into bench/results/summary.md."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["build.md", "descriptors.md", "gmp.md", "train.md"]  # the rest follow alphabetically


def main() -> None:
    reports = [p for p in RESULTS.glob("*.md") if p.name != "summary.md"]
    reports.sort(key=lambda p: (ORDER.index(p.name) if p.name in ORDER else len(ORDER), p.name))
    parts = [
        "# Benchmark summary",
        "",
        "Every benchmark of the project; regenerate with `make bench`. Each section names "
        "the machine it ran on.",
        "",
    ]
    for p in reports:
        text = p.read_text().strip().splitlines()
        if text and text[0].startswith("# "):
            text[0] = "#" + text[0]  # demote each report's title one level
        parts += [*text, "", f"(from `bench/results/{p.name}`)", ""]
    (RESULTS / "summary.md").write_text("\n".join(parts))
    print(f"wrote {RESULTS / 'summary.md'} ({len(reports)} reports)")


if __name__ == "__main__":
    main()
