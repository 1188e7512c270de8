"""Summarise built stand-in datasets into ``results/data/stats_{ci,full}.json``.

Reads each dataset's manifests and ``BUILD_INFO.json`` (never the audio), so the numbers are
those of the build actually on disk: clips, classes and captions per split, caption lengths,
durations, disk use, build time, package versions, and the commit/date of the build.

It also reports how well each zero-shot set's classes are covered by the training set's
vocabulary (``zero_shot_coverage``): a zero-shot class is covered when its name, or one of the
training labels the hand-written table ``rules/zeroshot_to_training.tsv`` maps it to, is a label
of the training split.

Usage: ``python data_scripts/dataset_stats.py --config {ci,full} [--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_scripts import buildlib as bl  # noqa: E402
from data_scripts.debian import data_root  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATASETS = {
    "ci": ("debsfx-ci", "instruments-ci", "tuxpaint-zs", "edusounds-zs", "debsfx-scenes-ci"),
    "full": ("debsfx", "instruments", "tuxpaint-zs", "edusounds-zs", "sfxpool", "debsfx-scenes"),
}
#: per config: the training set whose vocabulary the zero-shot sets are compared with
TRAINING_SET = {"ci": "debsfx-ci", "full": "debsfx"}
ZERO_SHOT_SETS = ("tuxpaint-zs", "edusounds-zs")
CLASS_MAPPING = Path(__file__).resolve().parent / "rules" / "zeroshot_to_training.tsv"
DURATION_BINS = (0, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 1e9)


def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] if s else 0.0


def dataset_stats(d: Path) -> dict:
    """Statistics of one built dataset directory (raises FileNotFoundError if not built)."""
    from mltm.data.manifest import read_manifest

    d = Path(d)
    info = bl.read_build_info(d)
    if info is None:
        raise FileNotFoundError(f"{d} is not a complete build (no {bl.BUILD_INFO}); build it with "
                                "`bash data_scripts/build_all.sh ci|full`")
    splits, all_recs = {}, []
    for split in ("train", "val", "test"):
        p = d / f"{split}.jsonl"
        if not p.exists():
            continue
        recs = read_manifest(p)
        all_recs += recs
        caps = [c for r in recs for c in r.captions]
        splits[split] = dict(
            clips=len(recs), captions=len(caps), unique_captions=len(set(caps)),
            classes=len({r.label for r in recs}), groups=len({r.group for r in recs}),
            captions_per_clip=dict(sorted(Counter(len(r.captions) for r in recs).items())),
            minutes=round(sum(r.duration or 0 for r in recs) / 60, 2),
        )
    groups_by_split = {s: {r.group for r in read_manifest(d / f"{s}.jsonl")} for s in splits}
    overlap = sum(len(groups_by_split[a] & groups_by_split[b])
                  for i, a in enumerate(splits) for b in list(splits)[i + 1:])
    durs = [r.duration or 0.0 for r in all_recs]
    caps = [c for r in all_recs for c in r.captions]
    words = [len(c.split()) for c in caps]
    hist = Counter()
    for x in durs:
        for lo, hi in zip(DURATION_BINS[:-1], DURATION_BINS[1:]):
            if lo <= x < hi:
                hist[f"{lo}-{hi if hi < 1e9 else 'inf'}"] += 1
                break
    per_class = Counter(r.label for r in all_recs)
    scenes = None
    if info.get("builder") == "data_scripts/build_scenes.py":
        from data_scripts.build_scenes import scene_stats

        scenes = scene_stats(d)   # events per scene, relations, caption lengths per split
    out = dict(
        name=info.get("name", d.name),
        builder=info.get("builder"),
        build=dict(commit=info.get("commit"), created=info.get("created"),
                   seconds=info.get("build_seconds"), settings=info.get("settings")),
        packages=info.get("packages", []),
        download_bytes=sum(p.get("deb_bytes", 0) for p in info.get("packages", [])),
        disk_bytes=bl.dir_bytes(d),
        clips=len(all_recs), classes=len(per_class), captions=len(caps),
        unique_captions=len(set(caps)),
        vocabulary=len({w for c in caps for w in c.lower().split()}),
        caption_words=dict(mean=round(statistics.fmean(words), 2) if words else 0,
                           min=min(words, default=0), max=max(words, default=0)),
        duration_s=dict(total_minutes=round(sum(durs) / 60, 2),
                        mean=round(statistics.fmean(durs), 3) if durs else 0,
                        median=round(_q(durs, 0.5), 3), min=round(min(durs, default=0), 3),
                        max=round(max(durs, default=0), 3)),
        duration_histogram=dict(hist),
        splits=splits,
        groups_shared_between_splits=overlap,
        largest_classes=dict(per_class.most_common(10)),
        smallest_classes=dict(sorted(per_class.items(), key=lambda kv: (kv[1], kv[0]))[:5]),
        filters=info.get("filters", {}),
        dropped_classes=info.get("dropped_classes", {}),
    )
    if scenes is not None:
        out["scenes"] = scenes
    return out


def load_class_mapping(path: Path = CLASS_MAPPING) -> dict[str, tuple[str, ...]]:
    """zero-shot class -> training labels, from a ``class<TAB>label label ...`` table.

    ValueError naming the line on a row without two fields or a class listed twice.
    """
    out: dict[str, tuple[str, ...]] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 2 or not cols[0].strip() or not cols[1].split():
            raise ValueError(f"{path}:{n}: expected 'zero-shot class<TAB>training label(s)', "
                             f"got {line!r}")
        cls = cols[0].strip()
        if cls in out:
            raise ValueError(f"{path}:{n}: class {cls!r} listed twice; "
                             "put all its labels on one row")
        out[cls] = tuple(cols[1].split())
    return out


def training_labels(d: Path, splits: tuple[str, ...] = ("train",)) -> set[str]:
    """The labels of a manifest directory's *splits* (FileNotFoundError naming a missing one)."""
    from mltm.data.manifest import read_manifest

    labels: set[str] = set()
    for split in splits:
        p = Path(d) / f"{split}.jsonl"
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: build the training set first "
                                    "(`bash data_scripts/build_all.sh ci|full`)")
        labels |= {r.label for r in read_manifest(p) if r.label}
    return labels


def zero_shot_coverage(zs_classes, train_labels, mapping: dict[str, tuple[str, ...]],
                       clips_per_class: dict[str, int] | None = None) -> dict:
    """Which zero-shot classes have a counterpart in a training vocabulary.

    Args:
        zs_classes: The zero-shot set's class names.
        train_labels: The training set's label vocabulary.
        mapping: zero-shot class -> training labels naming the same sound (exact name matches
            count without an entry).
        clips_per_class: Optional clip counts, for the fraction of clips covered.

    Returns:
        ``classes``, ``covered`` (class -> the training labels it matches, sorted),
        ``uncovered`` (sorted), ``fraction`` of classes covered (and ``clip_fraction`` when
        counts are given).
    """
    vocab = set(train_labels)
    covered, uncovered = {}, []
    for cls in sorted(set(zs_classes)):
        hits = sorted(({cls} | set(mapping.get(cls, ()))) & vocab)
        if hits:
            covered[cls] = hits
        else:
            uncovered.append(cls)
    n = len(covered) + len(uncovered)
    out = dict(classes=n, covered=covered, uncovered=uncovered,
               fraction=round(len(covered) / n, 4) if n else 0.0)
    if clips_per_class is not None:
        total = sum(clips_per_class.values())
        hit = sum(c for k, c in clips_per_class.items() if k in covered)
        out["clip_fraction"] = round(hit / total, 4) if total else 0.0
    return out


def coverage_report(root: Path, config: str, training: Path | None = None) -> dict:
    """Coverage of every zero-shot set by the config's training set (TRAINING_SET) or *training*."""
    from mltm.data.manifest import read_manifest

    train_dir = Path(training) if training else root / TRAINING_SET[config]
    train = train_dir.name
    vocab = training_labels(train_dir)
    mapping = load_class_mapping()
    out = {}
    for name in ZERO_SHOT_SETS:
        recs = read_manifest(root / name / "test.jsonl")
        counts = dict(Counter(r.label for r in recs))
        out[name] = dict(training_set=train, training_split="train",
                         training_labels=len(vocab), mapping=CLASS_MAPPING.name,
                         **zero_shot_coverage(counts, vocab, mapping, counts))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(DATASETS), required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--data", type=Path, help="dataset root (default $MLTM_DATA or <repo>/data)")
    ap.add_argument("--training", type=Path,
                    help="training manifest dir for the zero-shot coverage (default: debsfx-ci "
                         "for ci, debsfx for full; e.g. data/sfxpool)")
    ap.add_argument("--only", nargs="+", metavar="NAME",
                    help="recompute only these datasets and keep the other entries of the "
                         "existing stats file (each entry carries its own build commit and "
                         "date), e.g. when the other full builds are not on this machine")
    args = ap.parse_args(argv)
    root = args.data or data_root()
    out = args.out or REPO / "results" / "data" / f"stats_{args.config}.json"
    names = DATASETS[args.config]
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            print(f"error: --only {' '.join(unknown)}: not a {args.config} dataset "
                  f"({', '.join(names)})", file=sys.stderr)
            return 2
        names = tuple(args.only)
    result = dict(config=args.config, datasets={})
    if args.only and out.exists():
        result = json.loads(out.read_text())
    missing = []
    for name in names:
        try:
            result["datasets"][name] = dataset_stats(root / name)
        except FileNotFoundError as e:
            missing.append(str(e))
    if missing:
        print("\n".join(missing), file=sys.stderr)
        return 1
    result["datasets"] = {n: result["datasets"][n] for n in DATASETS[args.config]
                          if n in result["datasets"]}  # the config's order
    train_dir = Path(args.training) if args.training else root / TRAINING_SET[args.config]
    if train_dir.exists():
        result["zero_shot_coverage"] = coverage_report(root, args.config, args.training)
    elif not args.only:
        print(f"error: {train_dir} is not built (needed for the zero-shot coverage)",
              file=sys.stderr)
        return 1
    if (root / "sfxpool").exists() and args.config == "full":
        # the scene benchmark trains on the pool: its coverage of the zero-shot classes
        result["zero_shot_coverage_sfxpool"] = coverage_report(root, args.config,
                                                               root / "sfxpool")
    out.parent.mkdir(parents=True, exist_ok=True)
    bl.write_json_atomic(out, result)
    for name, s in result["datasets"].items():
        print(f"{name:16s} clips={s['clips']:6d} classes={s['classes']:4d} "
              f"captions={s['captions']:6d} "
              f"minutes={s['duration_s']['total_minutes']:8.1f} "
              f"disk={s['disk_bytes'] / 1e6:8.1f} MB "
              f"build={s['build']['seconds']} s")
    for name, c in [*result.get("zero_shot_coverage", {}).items(),
                    *result.get("zero_shot_coverage_sfxpool", {}).items()]:
        print(f"{name:16s} classes covered by {c['training_set']}: "
              f"{len(c['covered'])}/{c['classes']} ({c['fraction']:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
