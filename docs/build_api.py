"""Build the API reference (HTML, with pdoc) of zyx's public modules: `python docs/build_api.py [--output DIR]`.

DIR defaults to docs/api (ignored by git). The pages are made from the docstrings, so they never fall out of
date; tests/test_api_docs.py builds them on every CI run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# zyx with its submodules, less every internal one (pdoc drops the modules a "!regex" matches)
SPECS = ["zyx", r"!zyx\.(?!(nn|nn\.functional|nn\.init|distributed)$)"]


def build(output: Path) -> list[Path]:
    """Write the reference into `output`; returns the pages written."""
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="markdown", show_source=False)
    pdoc.pdoc(*SPECS, output_directory=output)
    return sorted(output.rglob("*.html"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build zyx's API reference with pdoc.")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "api",
                        help="the folder for the HTML pages (default: docs/api)")
    target = parser.parse_args().output
    print(f"{len(build(target))} pages in {target}")
