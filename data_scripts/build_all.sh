#!/usr/bin/env bash
# Build the stand-in datasets into $MLTM_DATA (default <repo>/data), validate every
# manifest, and write results/data/stats_<mode>.json.
#
#   bash data_scripts/build_all.sh ci     # debsfx-ci, instruments-ci (and -mini), tuxpaint-zs, edusounds-zs, debsfx-scenes-ci
#   bash data_scripts/build_all.sh full   # debsfx, instruments, the zero-shot sets, sfxpool, debsfx-scenes
#
# Needs a Debian-like system with apt-get/dpkg-deb (packages are downloaded with
# `apt-get download` and unpacked without installing; `apt-get update` is run when a package
# cannot be found). Downloads and unpacked audio are cached in $MLTM_CACHE (default
# ~/.cache/mltm); a dataset that is already built with the same settings is not rebuilt, so a
# second run takes seconds. Set PYTHON to choose the interpreter (default: the repo's .venv).
set -euo pipefail

mode="${1:-}"
if [[ "$mode" != "ci" && "$mode" != "full" ]]; then
    echo "usage: bash data_scripts/build_all.sh {ci|full}" >&2
    exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export MLTM_DATA="${MLTM_DATA:-$repo/data}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
for tool in dpkg-deb tar; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (these builders need Debian's dpkg tools)" >&2; exit 2; }
done

# name, builder, arguments: in build order (the scene sets mix clips of a pool built before them)
if [[ "$mode" == ci ]]; then
    steps=("debsfx-ci|build_debsfx.py|--size ci"
           "instruments-ci|build_instruments.py|--size ci"
           "instruments-mini|build_instruments.py|--size mini"
           "tuxpaint-zs|build_tuxpaint_zeroshot.py|--size ci"
           "edusounds-zs|build_edusounds_zeroshot.py|--size ci"
           "debsfx-scenes-ci|build_scenes.py|--size ci")
else
    steps=("debsfx|build_debsfx.py|--size full"
           "instruments|build_instruments.py|--size full"
           "tuxpaint-zs|build_tuxpaint_zeroshot.py|--size full"
           "edusounds-zs|build_edusounds_zeroshot.py|--size full"
           "sfxpool|build_debsfx.py|--size pool"
           "debsfx-scenes|build_scenes.py|--size full")
fi

echo "== fetch_aisfx.py (pretrained aisfx encoder weights)" >&2; "$PYTHON" data_scripts/fetch_aisfx.py
declare -a names secs
t_all=$(date +%s.%N)
for i in "${!steps[@]}"; do
    IFS='|' read -r name builder args <<< "${steps[$i]}"
    names[$i]=$name
    echo "== $builder $args -> $name" >&2
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086  # args is a word list
    "$PYTHON" "data_scripts/$builder" $args
    secs[$i]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
done

echo "== validating manifests" >&2
status=0
for n in "${names[@]}"; do
    "$PYTHON" -m mltm.data.manifest validate "$MLTM_DATA/$n" || status=1
done
if [[ $status -ne 0 ]]; then
    echo "error: some manifests did not validate (see above)" >&2
    exit 1
fi

"$PYTHON" data_scripts/dataset_stats.py --config "$mode" >/dev/null

echo
printf '%-16s %10s %10s %10s\n' dataset "disk" "seconds" "clips"
for i in "${!names[@]}"; do
    d="$MLTM_DATA/${names[$i]}"
    clips=$(cat "$d"/*.jsonl | wc -l)
    printf '%-16s %10s %10s %10s\n' "${names[$i]}" "$(du -sh "$d" | cut -f1)" "${secs[$i]}" "$clips"
done
cache="${MLTM_CACHE:-$HOME/.cache/mltm}"
echo "cache $cache: $(du -sh "$cache" 2>/dev/null | cut -f1)"
awk -v a="$t_all" -v b="$(date +%s.%N)" 'BEGIN{printf "total: %.1f s\n", b-a}'
echo "stats: results/data/stats_$mode.json"
