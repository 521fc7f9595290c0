#!/bin/bash
# Build (if needed) and run every libFuzzer target under ASan + UBSan +
# LeakSanitizer; fail on any crash, leak, sanitizer report or timeout.
#
#   bash tests/fuzz/run.sh [--seconds N | --runs N] [--cpu-seconds N] [--target NAME]...
#                          [--build DIR] [--work DIR]
#
# --seconds N  run each target N seconds (default 20)
# --runs N     run each target for N inputs instead
# --cpu-seconds N
#              also stop a target once it has used N seconds of its own CPU
#              (with --runs: whichever comes first) -- for a campaign on a
#              machine shared with other work, where wall time overstates it
# --target     only this target (callauth, reqsign, envelope, session, config,
#              audit, dispatch); may be repeated
# --build DIR  the COFFER_FUZZ build (default build-fuzz; configured with
#              clang and built when its targets are missing)
# --work DIR   keep the corpora the runs grow (default: a temporary directory)
#
# The seeds in tests/fuzz/corpus/<target>/ are only read; what a run finds
# goes to the work directory. Prints the executions of each target.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

seconds=20
runs=""
cpu=""
build=build-fuzz
work=""
targets=()
all=(callauth reqsign envelope session config audit dispatch)
while [ $# -gt 0 ]; do
	case "$1" in
	--seconds) seconds=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--cpu-seconds) cpu=$2; shift 2 ;;
	--target) targets+=("$2"); shift 2 ;;
	--build) build=$2; shift 2 ;;
	--work) work=$2; shift 2 ;;
	*) echo "usage: $0 [--seconds N | --runs N] [--cpu-seconds N] [--target NAME]... [--build DIR] [--work DIR]" >&2
	   exit 2 ;;
	esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

missing=0
for t in "${targets[@]}"; do
	case " ${all[*]} " in *" $t "*) ;; *) echo "fuzz: no target $t (${all[*]})" >&2; exit 2 ;; esac
	[ -x "$build/tests/fuzz/fuzz_$t" ] || missing=1
done
if [ ! -f "$build/CMakeCache.txt" ]; then
	CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DCOFFER_FUZZ=ON \
		-DBUILD_TESTING=OFF >/dev/null
	missing=1
fi
# Always let make decide: a changed source rebuilds its targets.
cmake --build "$build" -j"$(nproc)" --target fuzz >/dev/null || {
	echo "fuzz: build failed" >&2; exit 1; }
[ $missing -eq 0 ] || echo "fuzz: built the targets in $build"

if [ -z "$work" ]; then
	work=$(mktemp -d /tmp/coffer-fuzz-XXXXXX)
	trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"

export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export LSAN_OPTIONS="suppressions=$root/tests/fuzz/lsan.supp"

# CPU seconds (user + system) a process has used so far.
cpu_of() {
	local f
	read -ra f <"/proc/$1/stat" || return 1
	# Fields 14 and 15 (utime, stime) counted after the ")" of the name.
	echo $(( (f[13] + f[14]) / $(getconf CLK_TCK) ))
}

fail=0
printf '%-9s %14s %8s %8s %10s  %s\n' target executions seconds cpu-s exec/s result
for t in "${targets[@]}"; do
	corpus="$work/$t"
	mkdir -p "$corpus"
	# A dispatcher input may generate an RSA-4096 key: seconds, more on a
	# loaded machine.
	timeout=60
	[ "$t" = dispatch ] && timeout=300
	args=(-print_final_stats=1 -rss_limit_mb=2048 -timeout=$timeout -artifact_prefix="$work/$t-")
	if [ -n "$runs" ]; then args+=(-runs="$runs")
	elif [ -n "$cpu" ]; then args+=(-max_total_time=$((cpu * 100)))
	else args+=(-max_total_time="$seconds"); fi
	[ -f "tests/fuzz/$t.dict" ] && args+=(-dict="tests/fuzz/$t.dict")
	log="$work/$t.log"
	# The token's own leaks (SoftHSM's Ed25519 signing leaks an ASN.1
	# object per C_SignInit) are suppressed by the frames of libsofthsm2;
	# libcrypto has no frame pointers, so only the slow unwinder sees them.
	unwind=""
	case $t in envelope|dispatch) unwind=":fast_unwind_on_malloc=0" ;; esac
	start=$(date +%s)
	rc=0
	ASAN_OPTIONS="$ASAN_OPTIONS$unwind" \
		"$build/tests/fuzz/fuzz_$t" "${args[@]}" "$corpus" "tests/fuzz/corpus/$t" >"$log" 2>&1 &
	pid=$!
	used=0 stopped=0
	while kill -0 $pid 2>/dev/null; do
		used=$(cpu_of $pid) || break
		if [ -n "$cpu" ] && [ "$used" -ge "$cpu" ] && [ $stopped -eq 0 ]; then
			# libFuzzer prints its final stats and exits 72 on SIGINT.
			kill -INT $pid
			stopped=1
		fi
		sleep 2
	done
	wait $pid || rc=$?
	[ $stopped -eq 1 ] && [ $rc -eq 72 ] && rc=0
	took=$(( $(date +%s) - start ))
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	result=ok
	if [ $rc -ne 0 ] || [ -z "$execs" ] ||
	   grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: ' "$log"; then
		result="FAILED (exit $rc)"
		fail=1
	fi
	printf '%-9s %14s %8s %8s %10s  %s\n' "$t" "${execs:-?}" "$took" "$used" "${rate:-?}" "$result"
	if [ "$result" != ok ]; then
		grep -E 'ERROR:|runtime error:|SUMMARY:|Test unit written|^#[0-9]+ .* in ' "$log" |
			head -40 | sed 's/^/    /'
		for a in "$work/$t"-*; do
			[ -f "$a" ] && echo "    reproducer $a: $(od -An -tx1 -v "$a" | tr -d ' \n' | head -c 2000)"
		done
	fi
done
[ $fail -eq 0 ] || { echo "fuzz: FAILED (logs in $work)"; trap - EXIT; exit 1; }
echo "fuzz: every target ran clean"
