#!/usr/bin/env bash
# The stable regression figure (issue 7): instructions executed by one fixed workload, counted by
# valgrind's callgrind. Instruction counts do not depend on the machine's load, so the figure is
# comparable from commit to commit on a noisy machine (wall-clock times are not).
#
# Workload: the in-process harness (crates/maftia-bench), atomic broadcast in CKPS01 mode, n = 4,
# batch 100, 250-byte requests, seed 1, one thread, 2 warm-up + 2 measured rounds — real BLS,
# Ed25519 and codec work, deterministic given the seed.
#
# Usage: scripts/callgrind.sh            prints "<commit> <instructions>"
#        scripts/callgrind.sh --annotate also prints the top functions by instructions
# Record the printed line in docs/performance.md ("Regression figure").
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
cargo build --release --locked -p maftia-bench --example bench >&2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
  target/release/examples/bench run abc 4 100 2 1 >"$out/run.log" 2>"$out/valgrind.log" || {
  cat "$out/run.log" "$out/valgrind.log" >&2
  exit 1
}
total=$(grep -E '^summary:' "$out/callgrind.out" | awk '{print $2}')
commit=$(git rev-parse --short HEAD)
[ -n "$(git status --porcelain --untracked-files=no)" ] && commit="$commit+dirty"
echo "$commit $total"
if [ "${1:-}" = "--annotate" ]; then
  callgrind_annotate --inclusive=no "$out/callgrind.out" 2>/dev/null | sed -n '1,40p'
fi
