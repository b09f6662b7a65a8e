#!/usr/bin/env bash
# Headless Locust against a tandem server, then an SLO check.
#
#   load/run.sh URL [--users N] [--spawn-rate R] [--run-time SECONDS] [--out DIR]
#                   [--p99-ms MS] [--max-error-rate F] [--min-rps RPS] [--max-shed-rate F]
#                   [--route NAME]... [LOCUST OPTIONS...]
#
# Writes DIR/locust_stats.csv (+ _failures, _exceptions, _stats_history), DIR/report.html,
# DIR/locust_slo.json and DIR/locust.log (Locust's log and end-of-run tables).
# Exit status: 0 SLOs met, 1 an SLO missed, 2 nothing to judge, 3 Locust itself failed
# (bad option, crash). Defaults: 4 users, 2/s, 30 s, --p99-ms 50 --max-error-rate 0.01.
# Other options go to Locust and the locustfile (--variants, --k, --mix, --pace, --shape,
# --tags, ...). The run is bounded twice: Locust stops at --run-time, `timeout` 60 s later.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

[[ ${1:-} == -h || ${1:-} == --help ]] && usage 0
[[ $# -ge 1 && $1 != -* ]] || usage
url=$1; shift
users=4 spawn_rate=2 run_time=30 out=load-out
slo=(--p99-ms 50 --max-error-rate 0.01)
locust_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage 0 ;;
    --users) users=$2; shift 2 ;;
    --spawn-rate) spawn_rate=$2; shift 2 ;;
    --run-time) run_time=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --p99-ms|--max-error-rate|--min-rps|--max-shed-rate|--route) slo+=("$1" "$2"); shift 2 ;;
    *) locust_args+=("$1"); shift ;;
  esac
done
[[ $run_time =~ ^[0-9]+$ ]] || { echo "run.sh: --run-time takes whole seconds" >&2; exit 2; }

mkdir -p "$out"
python="${PYTHON:-python}"
status=0
timeout --kill-after=10 "$((run_time + 60))" \
  "$python" -m locust -f "$here/locustfile.py" --headless --host "$url" \
    --users "$users" --spawn-rate "$spawn_rate" --run-time "${run_time}s" \
    --csv "$out/locust" --csv-full-history --html "$out/report.html" \
    --only-summary --exit-code-on-error 0 --stop-timeout 5 \
    ${locust_args[@]+"${locust_args[@]}"} >"$out/locust.log" 2>&1 || status=$?
if [[ $status -ne 0 ]]; then
  echo "run.sh: locust exited with $status (see $out/locust.log)" >&2
  tail -n 20 "$out/locust.log" >&2 || true
  exit 3
fi
# Later flags win in argparse, so SLO flags given on the command line override the defaults.
exec "$python" "$here/slo.py" "$out/locust" "${slo[@]}"
