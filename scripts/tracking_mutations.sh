#!/usr/bin/env bash
# Usage: bash scripts/tracking_mutations.sh  (needs the dev environment from scripts/check)
# Each run applies one deliberate bug in a throw-away git worktree and runs the tracking truth
# test, which must fail: track ids shuffled between the boxes of a frame, line direction
# inverted, a zone's exit never reported.
set -u
root=$(git rev-parse --show-toplevel)
export VISIONFLOW_TEST_CLIPS=${VISIONFLOW_TEST_CLIPS:-/tmp/trackclips}
test=tests/integration/test_tracking_truth.py
run() {
  name=$1; file=$2; from=$3; to=$4
  rm -rf /tmp/tmut && git -C "$root" worktree prune && git -C "$root" worktree add -q /tmp/tmut HEAD
  python3 - "$file" "$from" "$to" <<'PY'
import sys
p, a, b = "/tmp/tmut/" + sys.argv[1], sys.argv[2], sys.argv[3]
s = open(p).read(); assert a in s, a; open(p, "w").write(s.replace(a, b, 1))
PY
  (cd /tmp/tmut && PYTHONPATH=/tmp/tmut timeout 300 "$root/.venv/bin/python" -m pytest -q -p no:cacheprovider "$test" 2>&1 | grep -E "^E +(Assertion|assert)|passed|failed" | head -2 | cut -c1-300) | sed "s/^/[$name] /"
}
echo "[baseline] unmodified:"; (cd "$root" && PYTHONPATH="$root" timeout 300 .venv/bin/python -m pytest -q -s -p no:cacheprovider "$test" 2>&1 | grep -E "^E +(Assertion|assert)|tracking truth|passed|failed" | cut -c1-400)
run shuffled visionflow/tracking/processor.py 'ids = [int(i) if i >= 0 else None for i in found.track_ids]' 'ids = [int(i) if i >= 0 else None for i in found.track_ids]; ids = ids[1:] + ids[:1]'
run inverted visionflow/tracking/analytics.py 'direction = "in" if side > 0 else "out"' 'direction = "out" if side > 0 else "in"'
run no_exit visionflow/tracking/analytics.py '                        p.inside = False
                        events.append(' '                        p.inside = False
                        0 and events.append('
git -C "$root" worktree remove --force /tmp/tmut
