"""Convert a Clotho v2 release to the project's manifest layout.

Usage (from the repository root)::

    python data_scripts/prepare_clotho.py SRC OUT [--absolute-paths]

SRC holds ``clotho_captions_{development,validation,evaluation}.csv``
(``file_name,caption_1,...,caption_5``) and the audio in
``SRC/{development,validation,evaluation}/<file_name>``; they become ``train``, ``val`` and
``test``. See :func:`mltm.data.converters.prepare_clotho`. Missing audio is reported and
skipped.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mltm.data.converters import _cli, prepare_clotho  # noqa: E402


def main(argv=None) -> int:
    """Run the converter on ``argv`` (default: the command line); return the exit status."""
    return _cli(
        "prepare_clotho.py", "Convert Clotho v2 to OUT/{train,val,test}.jsonl.", argv,
        lambda a: prepare_clotho(a.src, a.out, absolute_paths=a.absolute_paths),
    )


if __name__ == "__main__":
    sys.exit(main())
