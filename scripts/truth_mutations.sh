#!/usr/bin/env bash
# Usage: bash scripts/truth_mutations.sh  (needs the dev environment from scripts/check)
# Each run applies one deliberate bug in a throw-away git worktree and runs the truth test,
# which must fail: a wrong letterbox, detections given to the wrong frames, drifting seq.
# Break the pipeline on purpose three ways; the truth test must fail each time.
set -u
root=$(git rev-parse --show-toplevel)
export VISIONFLOW_TEST_CLIPS=/tmp/truthclips
run() {
  name=$1; file=$2; from=$3; to=$4
  rm -rf /tmp/mut && git -C "$root" worktree prune && git -C "$root" worktree add -q /tmp/mut HEAD
  python3 - "$file" "$from" "$to" <<'PY'
import sys
p, a, b = "/tmp/mut/" + sys.argv[1], sys.argv[2], sys.argv[3]
s = open(p).read(); assert a in s, a; open(p, "w").write(s.replace(a, b, 1))
PY
  (cd /tmp/mut && timeout 300 "$root/.venv/bin/python" -m pytest -q -p no:cacheprovider tests/integration/test_truth.py 2>&1 | grep -E "^E .*(Assertion|best frame|only)|passed|failed" | head -3 | cut -c1-400) | sed "s/^/[$name] /"
}
echo "[baseline] unmodified:"; (cd "$root" && timeout 300 .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_truth.py -s 2>&1 | grep -E "truth check|passed|failed" | cut -c1-600)
run letterbox visionflow/pipeline/letterbox.py 'out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_x) / lb.scale' 'out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_y) / lb.scale'
run swapped visionflow/workers/inference.py '(frame, to_detections(decoded[i], frame.letterbox, spec.class_names))' '(frame, to_detections(decoded[len(frames) - 1 - i], frame.letterbox, spec.class_names))'
run drift visionflow/workers/ingest.py '        self.seq += 1
        now = time.time()' '        self.seq += 2 if self.seq % 25 == 24 else 1
        now = time.time()'
git -C "$root" worktree remove --force /tmp/mut
