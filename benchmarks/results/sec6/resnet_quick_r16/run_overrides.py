import sys, time
from sdeverify.experiments import train_batch_size as tb, train_svag as ts, train_common as tc
name, R, norm = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "bn"
mod = {"tb": tb, "ts": ts}[name]
kw = dict(tc.data_overrides(mod.NET_SIZES, "quick", "conv_teacher"), replicas=R, norm=norm)
if not norm:
    kw["lr_grid"] = (0.05, 0.1, 0.2, 0.4)
t = time.time()
res = mod.run(size="quick", seed=int(sys.argv[4]) if len(sys.argv) > 4 else 0, **kw)
for v in res.verdicts:
    print(('PASS' if v.passed else 'FAIL'), v.claim, '|', v.measured if hasattr(v,'measured') else v)
print("wall", time.time() - t)
