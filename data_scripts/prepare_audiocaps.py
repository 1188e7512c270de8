"""Convert an AudioCaps release to the project's manifest layout.

Usage (from the repository root)::

    python data_scripts/prepare_audiocaps.py SRC OUT [--splits train val test] [--absolute-paths]

SRC holds ``{train,val,test}.csv`` (``audiocap_id,youtube_id,start_time,caption``) and the
downloaded audio, found as ``SRC/audio/{split}/{youtube_id}.wav`` (or ``Y{youtube_id}``,
``{youtube_id}_{start}``; ``.wav`` or ``.flac``; also under ``SRC/{split}/``,
``SRC/waveforms/{split}/`` or ``SRC/audio/``). See :func:`mltm.data.converters.prepare_audiocaps`.
Missing audio is reported and skipped.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mltm.data.converters import _cli, prepare_audiocaps  # noqa: E402


def main(argv=None) -> int:
    """Run the converter on ``argv`` (default: the command line); return the exit status."""
    def extra(p):
        p.add_argument("--splits", nargs="+", default=["train", "val", "test"],
                       choices=["train", "val", "test"], help="splits to convert")

    return _cli(
        "prepare_audiocaps.py", "Convert AudioCaps to OUT/{train,val,test}.jsonl.", argv,
        lambda a: prepare_audiocaps(a.src, a.out, splits=a.splits,
                                    absolute_paths=a.absolute_paths),
        extra,
    )


if __name__ == "__main__":
    sys.exit(main())
