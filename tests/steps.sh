# Sourced by tests/run.sh: named, timed steps, in the foreground or side by side in the
# background, and a table of every step's time at the end (also when one fails), so that
# a slow CI run says which step was slow.
#
#   step NAME CMD...     runs CMD; its time is recorded under NAME
#   spawn NAME CMD...    starts CMD in the background, its output kept in a log
#   join NAME            waits for it, prints its log, and fails when it failed
#   after NAME           (inside a background step) waits until step NAME has ended;
#                        fails when it failed
#   steps_report         the table (run from the EXIT trap)

STEPS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/trainyard-steps.XXXXXX")
STEPS_T0=$(date +%s.%N)
declare -A STEPS_PID=()

steps_now() { date +%s.%N; }
steps_since() { awk -v a="$1" -v b="$(steps_now)" 'BEGIN { printf "%.0f", b - a }'; }
# NAME SECONDS STATUS START: one row of the table, with when the step started.
steps_note() {
  printf '%-28s %6s s  from %5s s  %s\n' "$1" "$2" \
    "$(awk -v a="$STEPS_T0" -v b="$4" 'BEGIN { printf "%.0f", b - a }')" "$3" >>"$STEPS_DIR/times"
}

step() {
  local name=$1 t rc=0
  shift
  t=$(steps_now)
  echo "==> $name" >&2
  "$@" || rc=$?
  steps_note "$name" "$(steps_since "$t")" "$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")" "$t"
  return $rc
}

spawn() {
  local name=$1
  shift
  echo "==> $name (in the background)" >&2
  (
    t=$(steps_now)
    rc=0
    "$@" >"$STEPS_DIR/$name.log" 2>&1 </dev/null || rc=$?
    steps_note "$name (background)" "$(steps_since "$t")" "$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")" "$t"
    echo $rc >"$STEPS_DIR/$name.rc"
    exit $rc
  ) &
  STEPS_PID[$name]=$!
}

join() {
  local name=$1 t rc=0
  t=$(steps_now)
  wait "${STEPS_PID[$name]}" || rc=$?
  unset "STEPS_PID[$name]"
  steps_note "  waited for $name" "$(steps_since "$t")" "" "$t"
  sed "s/^/[$name] /" "$STEPS_DIR/$name.log" >&2
  [ $rc = 0 ] || echo "==> $name failed ($rc)" >&2
  return $rc
}

after() {
  while [ ! -f "$STEPS_DIR/$1.rc" ]; do sleep 1; done
  return "$(cat "$STEPS_DIR/$1.rc")"
}

steps_report() {
  local rc=$?
  local pid
  for pid in "${STEPS_PID[@]}"; do kill "$pid" 2>/dev/null || true; done
  {
    echo
    echo "Step times ($(nproc) cores; a background step overlaps the steps beside it):"
    cat "$STEPS_DIR/times" 2>/dev/null || true
    printf '%-28s %6s s\n' "total" "$(steps_since "$STEPS_T0")"
  } >&2
  rm -rf "$STEPS_DIR"
  return $rc
}
