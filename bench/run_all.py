"""Every workload (W1a W1b W2a W2b W3; W4 W5 W6 with --train; H1 H2 with --host) for every implementation, as one
markdown table.

    python bench/run_all.py [--big] [--train] [--host] [--repeat 7] [--device N] [--only numpy,torch,...] [--json OUT]

--train adds the training workloads: W4 (a training step, train_step.py), W5 (cold and warm process starts,
cold_start.py; these run in child processes) and W6 (the step's peak memory, train_step.py).
--train-only runs those alone. --host adds zyx's host time per call (host_time.py: a cached realize, a replay).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cold_start  # noqa: E402
import elementwise  # noqa: E402
import host_time  # noqa: E402
import matmul  # noqa: E402
import reduce  # noqa: E402
import train_step  # noqa: E402
from _harness import check_args, finish, parser, pick_device  # noqa: E402


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    elementwise.add_arguments(p)
    matmul.add_arguments(p)
    p.add_argument("--train", action="store_true", help="also W4 (training step), W5 (cold start), W6 (memory)")
    p.add_argument("--train-only", action="store_true", help="only W4, W5 and W6")
    p.add_argument("--host", action="store_true", help="also H1, H2 (host time per call)")
    train_step.add_arguments(p)
    cold_start.add_arguments(p)
    host_time.add_arguments(p)
    args = p.parse_args()
    check_args(args)
    device, cl_device, why = pick_device(args.device)
    if device is not None:
        print(device.header(), file=sys.stderr)
    records = []
    modules = [] if args.train_only else [elementwise, reduce, matmul]
    if args.train or args.train_only:
        modules += [train_step, cold_start]
    if args.host:
        modules.append(host_time)
    for module in modules:
        records += module.run(args, device, cl_device)
    finish(args, records, device, why)


if __name__ == "__main__":
    main()
