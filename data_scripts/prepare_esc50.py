"""Convert ESC-50 to the project's zero-shot manifest (OUT/test.jsonl).

Usage (from the repository root)::

    python data_scripts/prepare_esc50.py SRC OUT [--folds 5 | --folds all] [--absolute-paths]

SRC is the release folder (``ESC-50-master``) with ``meta/esc50.csv``
(``filename,fold,target,category,esc10,src_file,take``) and ``audio/<filename>``. Captions are
"This is a sound of {category}" (the paper's prompt). The paper's test set is 400 clips, one
fold, without saying which; the default is fold 5. See
:func:`mltm.data.converters.prepare_esc50`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mltm.data.converters import _cli, prepare_esc50  # noqa: E402


def _folds(values):
    if values == ["all"]:
        return (1, 2, 3, 4, 5)
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise ValueError(f"--folds takes fold numbers 1-5 or 'all', got {values}") from None


def main(argv=None) -> int:
    """Run the converter on ``argv`` (default: the command line); return the exit status."""
    def extra(p):
        p.add_argument("--folds", nargs="+", default=["5"],
                       help="folds to include (1-5, or 'all'); default 5 (400 clips)")
        p.add_argument("--template", default="This is a sound of {category}",
                       help="caption template with a {category} field")

    return _cli(
        "prepare_esc50.py", "Convert ESC-50 to OUT/test.jsonl for zero-shot retrieval.", argv,
        lambda a: prepare_esc50(a.src, a.out, folds=_folds(a.folds), template=a.template,
                                absolute_paths=a.absolute_paths),
        extra,
    )


if __name__ == "__main__":
    sys.exit(main())
