#!/usr/bin/env bash
# Short fuzz smoke run for CI: builds every target (cargo-fuzz) and
# runs each for a fixed number of executions, starting from its committed
# corpus and regression inputs. New inputs go to a scratch directory, never
# into the committed corpus. Fails on any crash, failed assertion, memory
# bound exceeded or timeout; a failing input is left in fuzz/artifacts/.
#
#   fuzz/ci.sh                # 10000 runs per target
#   FUZZ_RUNS=100000 fuzz/ci.sh
#   fuzz/ci.sh net_rx qcow2   # some targets only
set -euo pipefail
cd "$(dirname "$0")"

runs="${FUZZ_RUNS:-10000}"
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(mmio_transport blk_request net_tx net_rx qcow2)

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
# Nightly when the machine has it; without a sanitizer cargo-fuzz needs no
# unstable flag, so the machine's stable toolchain works too.
cargo=(cargo)
if cargo +nightly --version >/dev/null 2>&1; then
    cargo=(cargo +nightly)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/ci.sh: installing cargo-fuzz"
    cargo install --locked cargo-fuzz --version 0.13.2
fi

# No sanitizer: the harnesses' own assertions are the oracle, and the
# targets are safe Rust over vm-memory (ASan is for campaigns: README.md).
echo "fuzz/ci.sh: $("${cargo[@]}" --version), building the targets"
"${cargo[@]}" fuzz build --sanitizer none

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
passed=0
failed=0
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    dirs=("$scratch/$t" "corpus/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    max_len=8192
    [ "$t" = qcow2 ] && max_len=65536
    start=$SECONDS
    if "${cargo[@]}" fuzz run --sanitizer none "$t" "${dirs[@]}" -- \
        -runs="$runs" -max_len="$max_len" -timeout=30 -rss_limit_mb=4096 \
        -print_final_stats=1 >"$scratch/$t.log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")
        echo "fuzz/ci.sh: $t ok: ${execs:-?} executions in $((SECONDS - start)) s"
        passed=$((passed + 1))
    else
        echo "fuzz/ci.sh: $t FAILED; its log ends:" >&2
        tail -n 40 "$scratch/$t.log" >&2
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
