#!/usr/bin/env bash
# tests/soak/run.sh: the slow tier (make soak), not part of make test.
#
#   run.sh fuzz   cargo-fuzz target c_abi for SOAK_FUZZ_SECONDS (default 60), ASan + leak check
#   run.sh tsan   ThreadSanitizer: dispatcher-core's tests, and tests/soak/tsan_stress.c
#                 linked against a TSan-built staticlib, with its seeded-race control
#   run.sh soak   the soak binary for SOAK_MINUTES (default 30), after its seeded-loss control
#   run.sh all    the three, then a summary table; exit 1 if any part failed
#
# fuzz and tsan need the nightly toolchain (sanitizers, -Zbuild-std). Without it they print
# "SKIPPED: nightly toolchain unavailable" and count as skipped, never as passed.
# Each part writes build/soak/<part>.result (verdict, seconds, figures) and a full log beside
# it. Every step runs under `timeout`, so nothing here can hang a make.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/build/soak
BIN=${BD_TOOLS_BIN:-$ROOT/.venv/bin}
TARGET=x86_64-unknown-linux-gnu
TSAN_DIR=$ROOT/target/tsan
mkdir -p "$OUT"
cd "$ROOT" || exit 1

# result PART VERDICT SECONDS FIGURES...
result() {
    local part=$1 verdict=$2 seconds=$3
    shift 3
    printf '%s\t%s\t%s\t%s\n' "$part" "$verdict" "$seconds" "$*" > "$OUT/$part.result"
    echo "soak[$part]: $verdict in ${seconds}s: $*"
}

# Nightly with rust-src (for -Zbuild-std and cargo-fuzz), or a reason why not.
nightly_missing() {
    if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        echo "no nightly in 'rustup toolchain list'"
        return 0
    fi
    local src
    src="$(rustc +nightly --print sysroot 2>/dev/null)/lib/rustlib/src/rust/library"
    if [ ! -d "$src" ]; then
        rustup component add rust-src --toolchain nightly > /dev/null 2>&1
    fi
    if [ ! -d "$src" ]; then
        echo "nightly has no rust-src and 'rustup component add rust-src' failed"
        return 0
    fi
    return 1
}

skip_if_no_nightly() {
    local part=$1 why
    if why=$(nightly_missing); then
        echo "SKIPPED: nightly toolchain unavailable ($why)"
        result "$part" SKIPPED 0 "nightly toolchain unavailable: $why"
        return 0
    fi
    return 1
}

run_fuzz() {
    skip_if_no_nightly fuzz && return 0
    local seconds=${SOAK_FUZZ_SECONDS:-60} start=$SECONDS log=$OUT/fuzz.log rc
    if [ ! -x "$BIN/cargo-fuzz" ]; then
        echo "soak[fuzz]: $BIN/cargo-fuzz missing (make soak installs it)"
        result fuzz FAIL 0 "cargo-fuzz not installed"
        return 1
    fi
    echo "soak[fuzz]: cargo fuzz run c_abi for ${seconds}s (ASan, -detect_leaks=1); log $log"
    mkdir -p fuzz/corpus/c_abi
    # -timeout: one input taking 30 s is a hang. -rss_limit_mb: a leak or runaway queue.
    (cd fuzz && PATH="$BIN:$PATH" timeout $((seconds + 900)) cargo +nightly fuzz run c_abi \
        -- -max_total_time="$seconds" -detect_leaks=1 -timeout=30 -rss_limit_mb=4096 \
        -print_final_stats=1) > "$log" 2>&1
    rc=$?
    local runs crashes leaks corpus
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    crashes=$(grep -c -E '^==[0-9]+==ERROR|panicked at|deadly signal|^SUMMARY: libFuzzer: timeout' "$log")
    leaks=$(grep -c 'ERROR: LeakSanitizer' "$log")
    corpus=$(find fuzz/corpus/c_abi -type f | wc -l)
    # Negative control: with SOAK_FUZZ_SEEDED_LEAK=1 every input leaks 64 bytes, which
    # LeakSanitizer must report (non-zero exit), or "0 leaks" above would mean nothing.
    local ctl=$OUT/fuzz-control.log ctl_rc ctl_leaks
    SOAK_FUZZ_SEEDED_LEAK=1 timeout 300 fuzz/target/$TARGET/release/c_abi -runs=200 \
        -detect_leaks=1 -artifact_prefix="$OUT/fuzz-control-" > "$ctl" 2>&1
    ctl_rc=$?
    ctl_leaks=$(grep -c 'ERROR: LeakSanitizer' "$ctl")
    echo "soak[fuzz]: seeded-leak control: exit $ctl_rc, $ctl_leaks LeakSanitizer report(s) (must be >= 1)"
    local figures="runs ${runs:-0}, crashes $crashes, leaks $leaks, corpus $corpus inputs, exit $rc; seeded-leak control reported $ctl_leaks"
    if [ "$rc" -eq 0 ] && [ "$crashes" -eq 0 ] && [ "$leaks" -eq 0 ] && [ "${runs:-0}" -gt 0 ] &&
        [ "$ctl_rc" -ne 0 ] && [ "$ctl_leaks" -ge 1 ]; then
        result fuzz PASS $((SECONDS - start)) "$figures"
    else
        grep -v '^#' "$log" | tail -40
        result fuzz FAIL $((SECONDS - start)) "$figures; reproducer in fuzz/artifacts/c_abi/"
        return 1
    fi
}

run_tsan() {
    skip_if_no_nightly tsan && return 0
    local start=$SECONDS log=$OUT/tsan.log ok=1
    : > "$log"
    export TSAN_OPTIONS="halt_on_error=0 exitcode=66 second_deadlock_stack=1"
    local -a nightly_env=(env RUSTFLAGS=-Zsanitizer=thread CARGO_TARGET_DIR="$TSAN_DIR")

    # 1. dispatcher-core's unit and integration tests. Left out: tests/fork.rs, as TSan cannot
    #    follow a fork of a multi-threaded process ("starting new threads after multi-threaded
    #    fork is not supported"; fork is covered by the plain, ASan and valgrind runs), and the
    #    bounded-memory checks, whose resident-memory bound TSan's shadow memory breaks (they
    #    run in make test).
    local -a tests=(--lib)
    for f in dispatcher-core/tests/*.rs; do
        case "$(basename "$f")" in
            fork.rs | reliability_memory_*.rs) ;;
            *) tests+=(--test "$(basename "$f" .rs)") ;;
        esac
    done
    echo "soak[tsan]: dispatcher-core tests under TSan (${tests[*]}); log $log"
    timeout 1800 "${nightly_env[@]}" cargo +nightly test -Zbuild-std --target $TARGET \
        -p dispatcher-core "${tests[@]}" >> "$log" 2>&1
    local rust_rc=$?
    local rust_passed rust_warnings
    rust_passed=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed.*/\1/p' "$log" |
        awk '{ n += $1 } END { print n + 0 }')
    rust_warnings=$(grep -c 'WARNING: ThreadSanitizer' "$log")
    echo "soak[tsan]: rust: ${rust_passed:-0} tests passed, $rust_warnings TSan warnings, exit $rust_rc"
    [ "$rust_rc" -eq 0 ] && [ "$rust_warnings" -eq 0 ] || ok=0

    # 2. The C stress program against a TSan-built staticlib. gcc's own libtsan lacks the
    #    __tsan_memcpy family that nightly LLVM emits, so the C side is compiled with gcc
    #    -fsanitize=thread but linked with the nightly's TSan runtime instead.
    local clog=$OUT/tsan-c.log c_rc=1 ctl_rc=1 c_warnings=-1 ctl_warnings=0
    timeout 1800 "${nightly_env[@]}" cargo +nightly build -Zbuild-std --target $TARGET \
        -p dispatcher-ffi >> "$log" 2>&1 || ok=0
    local rt
    rt="$(rustc +nightly --print sysroot)/lib/rustlib/$TARGET/lib/librustc-nightly_rt.tsan.a"
    if ${CC:-cc} -std=c11 -O1 -g -Wall -Wextra -Werror -fsanitize=thread -Iinclude \
            -c tests/soak/tsan_stress.c -o "$OUT/tsan_stress.o" >> "$log" 2>&1 &&
        ${CC:-cc} "$OUT/tsan_stress.o" "$TSAN_DIR/$TARGET/debug/libbackground_dispatcher.a" \
            -Wl,--whole-archive "$rt" -Wl,--no-whole-archive -lpthread -ldl -lm -lstdc++ \
            -o "$OUT/tsan_stress" >> "$log" 2>&1; then
        timeout 900 "$OUT/tsan_stress" > "$clog" 2>&1
        c_rc=$?
        c_warnings=$(grep -c 'WARNING: ThreadSanitizer' "$clog")
        grep '^tsan_stress' "$clog"
        # Negative control: an unsynchronised C counter must be reported (exit 66).
        timeout 300 "$OUT/tsan_stress" --seeded-race > "$OUT/tsan-control.log" 2>&1
        ctl_rc=$?
        ctl_warnings=$(grep -c 'WARNING: ThreadSanitizer' "$OUT/tsan-control.log")
    else
        echo "soak[tsan]: building tsan_stress failed:"
        tail -20 "$log"
    fi
    echo "soak[tsan]: C stress: $c_warnings TSan warnings, exit $c_rc;" \
        "seeded race: $ctl_warnings warnings, exit $ctl_rc (must be 66)"
    [ "$c_rc" -eq 0 ] && [ "$c_warnings" -eq 0 ] || { ok=0; tail -60 "$clog"; }
    [ "$ctl_rc" -eq 66 ] && [ "$ctl_warnings" -ge 1 ] || ok=0

    local figures="rust ${rust_passed:-0} tests/$rust_warnings warnings; C stress $c_warnings warnings (exit $c_rc); control exit $ctl_rc"
    if [ $ok -eq 1 ]; then
        result tsan PASS $((SECONDS - start)) "$figures"
    else
        result tsan FAIL $((SECONDS - start)) "$figures; logs in $OUT"
        return 1
    fi
}

run_soak() {
    local start=$SECONDS minutes=${SOAK_MINUTES:-30} log=$OUT/soak.log ctl=$OUT/soak-control.log
    cargo build --quiet --release -p dispatcher-soak || {
        result soak FAIL $((SECONDS - start)) "build failed"
        return 1
    }
    # Negative control first (15 s): a ledger that forgets one entry per generation must FAIL.
    echo "soak[soak]: control run with SOAK_SEEDED_LOSS=1 (must FAIL)"
    SOAK_SEEDED_LOSS=1 SOAK_MINUTES=0.25 SOAK_RECREATE_SECONDS=5 timeout 300 \
        target/release/soak > "$ctl" 2>&1
    local ctl_rc=$?
    local ctl_lost
    ctl_lost=$(sed -n 's/.* lost \([0-9]*\), duplicates.*/\1/p' "$ctl" | tail -1)
    echo "soak[soak]: control: exit $ctl_rc, lost ${ctl_lost:-?}"
    echo "soak[soak]: SOAK_MINUTES=$minutes; log $log"
    timeout $(awk "BEGIN { printf \"%d\", $minutes * 60 + 600 }") target/release/soak 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local figures
    figures=$(grep '^soak: [0-9.]* min,' "$log" | tail -1 | sed 's/^soak: //')
    figures="${figures:-no summary}; $(grep '^soak: rss after' "$log" | sed 's/^soak: //')"
    if [ "$rc" -eq 0 ] && [ "$ctl_rc" -eq 1 ] && [ "${ctl_lost:-0}" -gt 0 ]; then
        result soak PASS $((SECONDS - start)) "$figures; control caught ${ctl_lost} lost"
    else
        result soak FAIL $((SECONDS - start)) "$figures; exit $rc; control exit $ctl_rc lost ${ctl_lost:-?}"
        return 1
    fi
}

summary() {
    local failed=0 skipped=0
    echo
    echo "make soak summary"
    printf '  %-5s %-8s %6s  %s\n' part verdict time figures
    for part in fuzz tsan soak; do
        if [ -f "$OUT/$part.result" ]; then
            IFS=$'\t' read -r p verdict seconds figures < "$OUT/$part.result"
        else
            verdict=FAIL seconds=0 figures="did not run"
        fi
        printf '  %-5s %-8s %5ss  %s\n' "$part" "$verdict" "$seconds" "$figures"
        [ "$verdict" = FAIL ] && failed=$((failed + 1))
        [ "$verdict" = SKIPPED ] && skipped=$((skipped + 1))
    done
    echo "soak: $((3 - failed - skipped)) passed, $failed failed, $skipped skipped"
    [ $failed -eq 0 ]
}

case "${1:-all}" in
    fuzz) run_fuzz ;;
    tsan) run_tsan ;;
    soak) run_soak ;;
    all)
        rm -f "$OUT"/*.result
        run_fuzz
        run_tsan
        run_soak
        summary
        ;;
    *)
        echo "usage: $0 [fuzz|tsan|soak|all]" >&2
        exit 2
        ;;
esac
