"""A build process (`build_processes.build_apart` starts it as `python -m`): builds each source it is sent for its
parent's device, as the parent would (`compiler.build_source`), and answers with the program's binary. A source it
cannot build is answered without one (the parent builds it and reports the error)."""
from __future__ import annotations

import base64
import json
import sys
import time

import pyopencl as cl

from zyx.jit.cache_key import device_with
from zyx.jit.compiler import build_source
from zyx.jit.program_binary import program_binary


def _serve(fingerprint: dict[str, str]) -> None:
    device = device_with(fingerprint)
    context = cl.Context([device]) if device is not None else None
    for line in sys.stdin:
        job = json.loads(line)
        start = time.perf_counter()
        binary = None
        if context is not None:
            try:
                program = build_source(context, device, job["source"], tuple(str(o) for o in job["options"]))
                binary = base64.b64encode(program_binary(program, device)).decode()
            except Exception:  # noqa: BLE001 - the parent builds it again and raises what it meets
                binary = None
        print(json.dumps({"index": job["index"], "binary": binary, "seconds": time.perf_counter() - start}),
              flush=True)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
