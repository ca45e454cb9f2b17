#!/usr/bin/env bash
# Fuzz smoke test for CI: builds every fuzz target and runs each for a bounded time, seeded from
# fuzz/seeds/<target> and fuzz/regressions/<target>; fails if any target crashes (a panic, a
# broken invariant, a leak, or more than the memory cap). See fuzz/README.md.
#
# Environment: FUZZ_SECONDS (per target, default 20), FUZZ_SANITIZER (default none; see the
# README for why), FUZZ_TARGETS (space-separated, default all).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-20}
sanitizer=${FUZZ_SANITIZER:-none}
nightly=+nightly

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== cargo install cargo-fuzz --locked"
  cargo install cargo-fuzz --locked
fi

targets=${FUZZ_TARGETS:-$(cargo $nightly fuzz list)}
# The same flags for build and run, so that `run` finds the build up to date.
flags=(--sanitizer "$sanitizer")

echo "== cargo fuzz build (sanitizer: $sanitizer)"
cargo $nightly fuzz build "${flags[@]}"

failed=()
for target in $targets; do
  echo "== $target: ${seconds}s"
  mkdir -p "corpus/$target" "artifacts/$target"
  dirs=("corpus/$target" "seeds/$target")
  if [ -d "regressions/$target" ]; then
    dirs+=("regressions/$target")
  fi
  extra=()
  if [ "$target" = client_hello ]; then
    extra+=(-max_len=20000) # past MAX_HELLO (16 KiB), which the target checks
  fi
  # corpus/ (git-ignored) comes first: libFuzzer adds what it finds there, never to the seeds.
  if ! cargo $nightly fuzz run "${flags[@]}" "$target" "${dirs[@]}" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
      "${extra[@]}" 2>"artifacts/$target/log"; then
    failed+=("$target")
    tail -n 60 "artifacts/$target/log"
    echo "!! $target crashed; reproducer in fuzz/artifacts/$target/"
  else
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)|^#[0-9]+.*DONE' \
      "artifacts/$target/log" || true
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}"
  exit 1
fi
echo "fuzz: $(echo $targets | wc -w) targets ran ${seconds}s each without a crash"
