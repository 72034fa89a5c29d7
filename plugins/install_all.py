"""Install every first-party plugin under plugins/ into the current environment (after the
core), each with its `test` extra (what its tests need, e.g. transformers for
vge-labeler's tiny OWL-ViT): what tox's `all` environment and CI use.
`python plugins/install_all.py [-e]`."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def plugin_dirs() -> list[Path]:
    return sorted(p.parent for p in HERE.glob("*/pyproject.toml"))


def main() -> int:
    editable = ["-e"] if "-e" in sys.argv[1:] else []
    dirs = plugin_dirs()
    if not dirs:
        print("no plugin under plugins/ yet")
        return 0
    args = [a for d in dirs for a in (*editable, f"{d}[test]")]
    return subprocess.call([sys.executable, "-m", "pip", "install", "-q", *args])


if __name__ == "__main__":
    sys.exit(main())
