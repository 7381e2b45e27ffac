#!/usr/bin/env bash
# The tests that start, signal or wait for processes (or servers, or ports), run N times in a row,
# on an idle machine or beside a second `pytest -n 2` of the whole suite (started again whenever
# it ends, until the rounds are done; then stopped with SIGINT and waited for, so that it leaves no
# process or SLURM daemon behind); prints one line per round and the failure count. Evidence for
# docs/cpu/timing-tests.md.
# Each round runs them as `make test` does (two workers, one file each at a time): the SLURM
# cluster and the dry GPU session side by side, as in every run of the suite.
#
# usage: tests/timing/repeat.sh N idle|loaded        (from the repository root, with .venv made)
set -uo pipefail
rounds=$1 mode=$2
py=${PYTHON:-.venv/bin/python}
tests=(
  "tests/test_engine.py::test_an_interrupted_run_resumes_to_the_same_history"  # SIGKILL/SIGTERM mid-epoch
  tests/test_gpu_script.py   # the session stopped by SIGTERM after a saved epoch; the deadline
  # a SLURM cluster on free ports; scancel --signal=TERM mid-training (the file's other tests wait
  # only for Snakemake's end, however long, and take minutes more: left out)
  "tests/test_slurm.py::test_interrupted_training_resumes_from_its_checkpoint"
  tests/test_devices.py      # GPU claims held by other processes; the claim's wait
  "tests/test_data.py::test_download_404_fails_at_once" "tests/test_data.py::test_download_connection_refused"
  "tests/test_data.py::test_download_timeout" "tests/test_data.py::test_download_flaky_server_succeeds_on_retry"
  "tests/test_data.py::test_download_truncated_body_is_retried_then_fails"
)
load_pid= stop_file=
stop_load() {
  # The loop starts no suite after this; SIGINT, as Ctrl-C would, lets the running pytest end its
  # tests and run its teardown (the SLURM fixture stops its daemons, which run in sessions of their
  # own and never see a signal sent to this group); SIGKILL only after a grace period.
  [ -n "$load_pid" ] || return 0
  touch "$stop_file"
  kill -INT -- "-$load_pid" 2>/dev/null
  for _ in $(seq 1 180); do
    kill -0 -- "-$load_pid" 2>/dev/null || break
    sleep 1
  done
  kill -KILL -- "-$load_pid" 2>/dev/null
  wait "$load_pid" 2>/dev/null
  rm -f "$stop_file"
  left=$(pgrep -f 'alexnet-slurm-|multiprocessing.forkserver|pytest -n 2 --dist loadfile -q -p no:cacheprovider$' || true)
  if [ -n "$left" ]; then echo "left behind by the load: $left" >&2; fi
}
if [ "$mode" = loaded ]; then
  # the whole suite, again and again until the rounds are done, in its own process group
  stop_file=$(mktemp -u /tmp/timing-load-stop.XXXXXX)
  # (env --default-signal: a job started with & in a script ignores SIGINT, and so would pytest)
  setsid env --default-signal=INT bash -c "while [ ! -e '$stop_file' ]; do '$py' -m pytest -n 2 --dist loadfile -q -p no:cacheprovider >/dev/null 2>&1; done" &
  load_pid=$!
  trap stop_load EXIT
elif [ "$mode" != idle ]; then
  echo "mode: idle or loaded" >&2; exit 2
fi
failed=0
for round in $(seq 1 "$rounds"); do
  started=$(date +%s)
  if "$py" -m pytest -n 2 --dist loadfile -q -p no:cacheprovider "${tests[@]}" >"/tmp/timing-$mode-$round.log" 2>&1; then
    result=passed
  else
    result=FAILED; failed=$((failed + 1))
  fi
  echo "$mode round $round: $result, $(tail -n 1 "/tmp/timing-$mode-$round.log" | tr -d '=') ($(( $(date +%s) - started )) s; load $(cut -d' ' -f1 /proc/loadavg))"
done
echo "$mode: $failed of $rounds rounds failed"
