"""Summarise built stand-in datasets into ``results/data/stats_{ci,full}.json``.

Reads each dataset's manifests and ``BUILD_INFO.json`` (never the audio), so the numbers are
those of the build actually on disk: clips, classes and captions per split, caption lengths,
durations, disk use, build time, package versions, and the commit/date of the build.

Usage: ``python data_scripts/dataset_stats.py --config {ci,full} [--out PATH]``
"""

from __future__ import annotations

import argparse
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
    "ci": ("debsfx-ci", "instruments-ci", "tuxpaint-zs"),
    "full": ("debsfx", "instruments", "tuxpaint-zs"),
}
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
        unique_captions=len(set(caps)), vocabulary=len({w for c in caps for w in c.lower().split()}),
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(DATASETS), required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--data", type=Path, help="dataset root (default $MLTM_DATA or <repo>/data)")
    args = ap.parse_args(argv)
    root = args.data or data_root()
    out = args.out or REPO / "results" / "data" / f"stats_{args.config}.json"
    result = dict(config=args.config, datasets={})
    missing = []
    for name in DATASETS[args.config]:
        try:
            result["datasets"][name] = dataset_stats(root / name)
        except FileNotFoundError as e:
            missing.append(str(e))
    if missing:
        print("\n".join(missing), file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    bl.write_json_atomic(out, result)
    for name, s in result["datasets"].items():
        print(f"{name:16s} clips={s['clips']:6d} classes={s['classes']:4d} captions={s['captions']:6d} "
              f"minutes={s['duration_s']['total_minutes']:8.1f} disk={s['disk_bytes'] / 1e6:8.1f} MB "
              f"build={s['build']['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
