#!/usr/bin/env bash
# Fuzz smoke test for CI: builds every fuzz target and runs each for a bounded time, seeded from
# fuzz/seeds/<target> and fuzz/regressions/<target>; fails if any target crashes (a panic, a
# broken invariant, a leak, or more than the memory cap). See fuzz/README.md.
#
# By default the targets are built on the stable toolchain with the coverage instrumentation
# cargo-fuzz uses and no sanitizer, in debug (unoptimized, overflow checks on): no nightly, no
# cargo-fuzz to install, the least build time. FUZZ_ENGINE=cargo-fuzz builds and runs them
# with `cargo +nightly fuzz` instead (FUZZ_SANITIZER, default none: address for ASan).
#
# Environment: FUZZ_SECONDS (per target, default 20), FUZZ_TARGETS (space-separated, default
# all), FUZZ_ENGINE (stable or cargo-fuzz), FUZZ_SANITIZER (cargo-fuzz only).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-20}
engine=${FUZZ_ENGINE:-stable}
sanitizer=${FUZZ_SANITIZER:-none}
all_targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^meshgate-fuzz$')
targets=${FUZZ_TARGETS:-$all_targets}

case "$engine" in
  stable)
    host=$(rustc -vV | sed -n 's/^host: //p')
    # cargo-fuzz's flags without a sanitizer. `--target` keeps them off build scripts and
    # proc macros, as cargo-fuzz does.
    export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
    echo "== cargo build (fuzz targets, coverage instrumentation, no sanitizer)"
    cargo build --locked --target "$host" --bins
    run() {
      local target=$1
      shift
      "$CARGO_TARGET_DIR/$host/debug/$target" "$@"
    }
    ;;
  cargo-fuzz)
    if ! rustup toolchain list | grep -q '^nightly'; then
      echo "fuzz: cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2
      exit 1
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
      echo "== cargo install cargo-fuzz --locked"
      cargo install cargo-fuzz --locked
    fi
    # The same flags for build and run, so that `run` finds the build up to date.
    echo "== cargo fuzz build (sanitizer: $sanitizer)"
    cargo +nightly fuzz build --sanitizer "$sanitizer"
    run() {
      local target=$1
      shift
      local dirs=()
      while [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; do
        dirs+=("$1")
        shift
      done
      cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "${dirs[@]}" -- "$@"
    }
    ;;
  *)
    echo "fuzz: FUZZ_ENGINE is stable or cargo-fuzz, not $engine" >&2
    exit 2
    ;;
esac

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
  if ! run "$target" "${dirs[@]}" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 \
      -print_final_stats=1 -artifact_prefix="artifacts/$target/" "${extra[@]}" \
      2>"artifacts/$target/log"; then
    failed+=("$target")
    tail -n 60 "artifacts/$target/log"
    echo "!! $target crashed; reproducer in fuzz/artifacts/$target/"
  else
    grep -E '^(stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb)' \
      "artifacts/$target/log" || true
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}"
  exit 1
fi
echo "fuzz: $(echo $targets | wc -w) targets ran ${seconds}s each without a crash"
