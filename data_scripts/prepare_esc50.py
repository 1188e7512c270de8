"""Convert ESC-50 to the project's zero-shot manifest (OUT/test.jsonl).

Usage (from the repository root)::

    python data_scripts/prepare_esc50.py SRC OUT [--fold 5 | --folds 4 5] [--absolute-paths]

SRC is the release folder (``ESC-50-master``) with ``meta/esc50.csv``
(``filename,fold,target,category,esc10,src_file,take``) and ``audio/<filename>``. Captions are
"This is a sound of {category}" (the paper's prompt). The default takes all five folds (2,000
clips), the usual zero-shot protocol; ``--fold N`` keeps one fold (400 clips: the paper's test
set is one fold, without saying which; fold 5 is the usual held-out one) and ``--folds``
several. See :func:`mltm.data.converters.prepare_esc50`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mltm.data.converters import _cli, prepare_esc50  # noqa: E402

ALL_FOLDS = (1, 2, 3, 4, 5)


def _folds(args):
    if args.fold is not None:
        return (args.fold,)
    if args.folds is None or args.folds == ["all"]:
        return ALL_FOLDS
    try:
        return tuple(int(v) for v in args.folds)
    except ValueError:
        raise ValueError(f"--folds takes fold numbers 1-5 or 'all', got {args.folds}") from None


def main(argv=None) -> int:
    """Run the converter on ``argv`` (default: the command line); return the exit status."""
    def extra(p):
        which = p.add_mutually_exclusive_group()
        which.add_argument("--fold", type=int, choices=ALL_FOLDS,
                           help="keep one fold (400 clips); default: all five folds (2,000)")
        which.add_argument("--folds", nargs="+",
                           help="keep several folds (1-5, or 'all'); default: all five")
        p.add_argument("--template", default="This is a sound of {category}",
                       help="caption template with a {category} field")

    return _cli(
        "prepare_esc50.py", "Convert ESC-50 to OUT/test.jsonl for zero-shot retrieval.", argv,
        lambda a: prepare_esc50(a.src, a.out, folds=_folds(a), template=a.template,
                                absolute_paths=a.absolute_paths),
        extra,
    )


if __name__ == "__main__":
    sys.exit(main())
