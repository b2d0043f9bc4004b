"""Every workload (W1a W1b W2a W2b W3) for every implementation, in one process, as one markdown table.

    python bench/run_all.py [--big] [--repeat 7] [--device N] [--only numpy,torch,...] [--json OUT]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import elementwise  # noqa: E402
import matmul  # noqa: E402
import reduce  # noqa: E402
from _harness import check_args, finish, parser, pick_device  # noqa: E402


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    elementwise.add_arguments(p)
    matmul.add_arguments(p)
    args = p.parse_args()
    check_args(args)
    device, cl_device, why = pick_device(args.device)
    if device is not None:
        print(device.header(), file=sys.stderr)
    records = []
    for module in (elementwise, reduce, matmul):
        records += module.run(args, device, cl_device)
    finish(args, records, device, why)


if __name__ == "__main__":
    main()
