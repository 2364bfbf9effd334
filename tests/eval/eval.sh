#!/usr/bin/env bash
# dmnist-run --eval on real MNIST (tests/eval/mnist-small.ini):
#  - a checkpoint written by a short training run evaluates to that run's
#    own final test loss and accuracy;
#  - the confusion matrix (--confusion CSV, and the --metrics eval event)
#    sums to the 10,000 test images; its diagonal over its row sums gives
#    the per-class accuracies printed, its trace the accuracy;
#  - 2 ranks (gloo) give the same numbers as 1 rank, matrix included;
#  - scripts/plot-confusion draws the CSV (where gnuplot is installed).
set -u
run=${1:?usage: eval.sh DMNIST-RUN}
src=${DMNIST_SOURCE_DIR:?}
data="$src/data/mnist"
if [ ! -e "$data/t10k-images-idx3-ubyte.gz" ] && [ ! -e "$data/t10k-images-idx3-ubyte" ]; then
  echo "SKIP: no MNIST in $data (run scripts/get-mnist.sh)"; exit 77
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmnist-eval.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
cfg="$src/tests/eval/mnist-small.ini"
fail() { echo "FAIL: $*"; exit 1; }
cd "$tmp" || exit 1

"$run" --no-progress --metrics train.jsonl --set train.checkpoint_dir=ck "$cfg" >train.log 2>&1 ||
  { cat train.log; fail "the training run failed"; }
ck=ck/ckpt-0000000040.dmck
[ -f "$ck" ] || { cat train.log; fail "no $ck after the training run"; }

"$run" --eval "$ck" --confusion c1.csv --metrics e1.jsonl "$cfg" >e1.log 2>&1 ||
  { cat e1.log; fail "--eval on 1 rank failed"; }
cat e1.log

python3 - train.jsonl e1.jsonl c1.csv e1.log <<'PY' || exit 1
import csv, json, re, sys
train, ev, csv_path, log = sys.argv[1:]
final = [json.loads(l) for l in open(train) if '"event":"final"' in l][-1]
e = json.loads(open(ev).read())
def fail(msg):
    print("FAIL: " + msg); sys.exit(1)
if e["event"] != "eval" or e["step"] != 40:
    fail("eval event %s" % e)
# the very numbers of the training run's own final evaluation
for k in ("test_accuracy", "test_loss"):
    if e[k] != final[k]:
        fail("%s: --eval gives %r, the training run's final evaluation %r" % (k, e[k], final[k]))
rows = list(csv.reader(open(csv_path)))
m = [[int(v) for v in r[1:]] for r in rows[1:]]
if m != e["confusion"]:
    fail("the CSV and the metrics event hold different matrices")
if len(m) != 10 or sum(map(sum, m)) != 10000:
    fail("the confusion matrix sums to %d, expected 10000" % sum(map(sum, m)))
if sum(m[i][i] for i in range(10)) != round(e["test_accuracy"] * 10000):
    fail("the diagonal (%d) is not the accuracy %g" % (sum(m[i][i] for i in range(10)), e["test_accuracy"]))
printed = {}
for line in open(log):
    g = re.fullmatch(r"\s*(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s*", line)
    if g:
        printed[int(g[1])] = (int(g[2]), int(g[3]), float(g[4]))
if sorted(printed) != list(range(10)):
    fail("no per-class table in the output")
for c in range(10):
    images, correct, acc = printed[c]
    if images != sum(m[c]) or correct != m[c][c] or abs(acc - m[c][c] / sum(m[c])) > 5e-5:
        fail("class %d: printed %s, matrix row %s" % (c, printed[c], m[c]))
    if abs(e["per_class_accuracy"][c] - m[c][c] / sum(m[c])) > 1e-6:
        fail("class %d: metrics per_class_accuracy %g" % (c, e["per_class_accuracy"][c]))
print("ok: --eval accuracy %g and loss %g equal the run's final evaluation; matrix sums to 10000, "
      "per-class accuracies agree" % (e["test_accuracy"], e["test_loss"]))
PY

if "$run" --list-plugins 2>/dev/null | grep -q '^comm  *gloo '; then
  "$run" --np 2 --set experiment.backend=gloo --eval "$ck" --confusion c2.csv --metrics e2.jsonl "$cfg" \
    >e2.log 2>&1 || { cat e2.log; fail "--eval on 2 gloo ranks failed"; }
  cmp -s c1.csv c2.csv || fail "2 ranks give another confusion matrix: $(diff c1.csv c2.csv)"
  strip() { sed -E 's/"(eval_s|world_size)":[^,]*,//g' "$1"; }
  [ "$(strip e1.jsonl)" = "$(strip e2.jsonl)" ] || fail "2 ranks give other numbers: $(strip e2.jsonl)"
  grep -q '"world_size":2' e2.jsonl || fail "the 2-rank eval event does not say 2 ranks"
  echo "ok: 2 ranks (gloo) give the same loss, accuracy and matrix as 1 rank"
else
  echo "skipped: 1 rank vs 2 ranks (no gloo plugin in this build)"
fi

if command -v gnuplot >/dev/null; then
  python3 "$src/scripts/plot-confusion" c1.csv --out c1.png >/dev/null || fail "plot-confusion failed"
  [ "$(head -c 4 c1.png | od -An -c | tr -d ' ')" = "211PNG" ] || fail "plot-confusion wrote no PNG"
  echo "ok: scripts/plot-confusion drew c1.png"
else
  echo "skipped: scripts/plot-confusion (no gnuplot)"
fi
exit 0
