#!/bin/bash
# The selection screens (issue 19), in the order that decides soonest, resumable on any machine.
#
#   git worktree add --detach ../wt-grid main && cd ../wt-grid && ln -s ../main/.venv .venv
#   nohup benchmarks/screens.sh > ../screens.log 2>&1 &
#   # before a working period ends, from the main checkout:
#   .venv/bin/python benchmarks/grid_records.py ../wt-grid/outputs/compare/selection-en-de
#   # (and selection-sum-en-en, massive-draws-en-de, check-en-es: every grid restored below)
#
# Each stage is `neft compare --cells` on the whole screen's config, so every stage's runs are
# the screen's own (docs/selection.md, "Running it in stages"). The runs recorded in
# benchmarks/results/grids/ are restored first (grid_records.py --restore: a run this machine
# finished itself is kept), so a new machine skips every run a former one finished. The
# worktree's own code runs, not the editable install's that a linked .venv points at. A stage
# with a failed run is reported and the next stage goes on; rerun the script to retry it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src"

for grid in selection-en-de selection-sum-en-en massive-draws-en-de check-en-es; do
    if [ -d "benchmarks/results/grids/$grid" ]; then
        .venv/bin/python benchmarks/grid_records.py --restore "benchmarks/results/grids/$grid" \
            || exit 1
    fi
done

stage() {  # stage GRID [CELLS] [more neft compare flags]
    .venv/bin/neft compare --config "benchmarks/compare/$1.yaml" ${2:+--cells "$2"} "${@:3}" \
        || echo "screens.sh: a run of $1 ${2:+(cells $2) }failed; see its log.txt" >&2
}

# A stage runs each cell's first seed at its middle rate first, then the other rates, then
# the other seeds: the reference's standard point, then the lead's, then their fronts.
lead=random-lora8,random-avoid-lora8        # random neurons without massive units: the lead
stage selection-en-de "$lead"                # the reference's and the lead's fronts and seeds
stage selection-sum-en-en "$lead"
stage selection-en-de "$lead,lora-r8"        # LoRA r8's front at the lead's low drift
stage selection-sum-en-en "$lead,lora-r8"
stage massive-draws-en-de                    # do the 130-200x units matter? (massive_draws.md)
# The other candidates: each one's middle rate on each screen (a point against the default's
# front; the en-es check between the two screens), then their other rates and seeds.
stage selection-en-de "" --first_runs
# drift-aware's en-de point drifted less than the default's front at its loss (2026-12-07):
# its front (4 rates) and seeds on both screens, before anything else.
challenger=neft-drift-aware-lora8
stage selection-en-de "$lead,$challenger"
stage selection-sum-en-en "$lead,$challenger"
# The default (and the challenger) on a pair no choice was made on, with the recipe of
# docs/selection.md ("Checking the default on your own pair or task"): en-es, test confirms;
# the two that decide the default first, then plain random neurons and LoRA r8.
check=(--data ../shared/data/ddtp/translation/en-es --target_lang es
       --output_dir outputs/compare/check-en-es)
stage selection-en-de "random-avoid-lora8,$challenger" "${check[@]}"
stage selection-en-de "$lead,lora-r8,$challenger" "${check[@]}"
stage selection-sum-en-en "" --first_runs
stage selection-en-de
stage selection-sum-en-en
