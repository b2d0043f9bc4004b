"""A separate process for the kernel cache tests: several of them share one cache directory.

    python cache_worker.py build C [C ...]   build, run and check add_C kernels; print a JSON report
    python cache_worker.py hammer            store entries in a loop until killed (prints "writing" first)
    python cache_worker.py populate SPEC     build add_0, store the variants SPEC (JSON) describes, and two
                                             "twins" whose keys share their first two hex digits

The cache directory comes from ZYX_CACHE_DIR. With ZYX_TEST_GO_FILE set, `build` waits for that file
to exist after its setup, so that all workers hit the cache at the same moment.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
import uuid
import warnings

import numpy as np
import pyopencl as cl

from zyx.jit import cache as kernel_cache
from zyx.jit.cache_key import cache_key
from zyx.counters import stats

N = 64


def kernel_source(constant: int) -> str:
    return (f"__kernel void add_{constant}(__global float* x) "
            f"{{ int i = get_global_id(0); x[i] = x[i] + {constant}.0f; }}")


def first_device() -> cl.Device:
    return cl.get_platforms()[0].get_devices()[0]


def added(context: cl.Context, program: cl.Program, constant: int, queue: cl.CommandQueue | None = None) -> np.ndarray:
    """0, 1, ..., N - 1 after one launch of `program`'s add_<constant>."""
    queue = queue or cl.CommandQueue(context)
    values = np.arange(N, dtype=np.float32)
    buffer = cl.Buffer(context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=values)
    cl.Kernel(program, f"add_{constant}")(queue, (N,), None, buffer)
    cl.enqueue_copy(queue, values, buffer)
    queue.finish()
    return values


def run_add(cache: kernel_cache.KernelCache, context: cl.Context, queue: cl.CommandQueue, constant: int,
            options: tuple[str, ...] = ()) -> bool:
    """Build add_<constant> through the cache, launch it once, commit it, and check the result."""
    program = cache.build(context, context.devices[0], kernel_source(constant), options)
    result = added(context, program, constant, queue)
    cache.commit(program)
    return bool(np.array_equal(result, np.arange(N, dtype=np.float32) + constant))


def store_variant(cache: kernel_cache.KernelCache, key: str, **changes) -> str:
    """Copy the entry `key` under changed key components, metadata fields or `hits`/`last_used`; return the new key."""
    row, binary = cache._store.get(key)
    meta = json.loads(row.meta)
    meta["components"] = {**meta["components"], **changes.pop("components", {})}
    columns = {name: changes.pop(name) for name in ("hits", "last_used") if name in changes}
    meta.update(changes)
    new_key = cache_key(meta["components"])
    assert cache._store.put(new_key, json.dumps(meta), binary), "variant already stored"
    set_columns(cache, new_key, **columns)
    return new_key


def set_columns(cache: kernel_cache.KernelCache, key: str, table: str = "kernels", **columns) -> None:
    """Write columns of one stored row directly, as another process or a damaged disk could."""
    if columns:
        with sqlite3.connect(cache._store.path) as db:
            assignments = ", ".join(f"{name} = ?" for name in columns)
            db.execute(f"UPDATE {table} SET {assignments} WHERE key = ?", (*columns.values(), key))


def build(constants: list[int]) -> None:
    device = first_device()
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    go_file = os.environ.get("ZYX_TEST_GO_FILE")
    if go_file:
        open(f"{go_file}.ready.{os.getpid()}", "w").close()
        while not os.path.exists(go_file):
            time.sleep(0.005)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = kernel_cache.KernelCache()
        correct = [run_add(cache, context, queue, constant) for constant in constants]
    print(json.dumps({"correct": correct, "stats": stats(), "warnings": [str(warning.message) for warning in caught]}))


def hammer() -> None:
    device = first_device()
    context = cl.Context([device])
    cache = kernel_cache.KernelCache()
    assert run_add(cache, context, cl.CommandQueue(context), 0)
    entry = next(entry for entry in cache.entries() if entry["components"]["options"] == "")
    print("writing", flush=True)
    while True:
        new_key = store_variant(cache, entry["key"], components={"options": f"-DRUN={uuid.uuid4().hex}"})
        cache._store.record_use(new_key)


def twin_options(components: dict[str, str]) -> tuple[str, str]:
    """Two build options whose keys start with the same two hex digits (for ambiguous-prefix tests)."""
    seen: dict[str, str] = {}
    for number in range(10_000):
        options = f"-DTWIN={number}"
        prefix = cache_key({**components, "options": options})[:2]
        if prefix in seen:
            return seen[prefix], options
        seen[prefix] = options
    raise AssertionError("no twins among 10000 keys")


def populate(spec: list[dict]) -> None:
    device = first_device()
    context = cl.Context([device])
    cache = kernel_cache.KernelCache()
    assert run_add(cache, context, cl.CommandQueue(context), 0)
    (entry,) = cache.entries()
    variants = [store_variant(cache, entry["key"], **changes) for changes in spec]
    twins = [store_variant(cache, entry["key"], components={"options": options})
             for options in twin_options(entry["components"])]
    print(json.dumps({"original": entry["key"], "variants": variants, "twins": twins}))


if __name__ == "__main__":
    mode, arguments = sys.argv[1], sys.argv[2:]
    if mode == "build":
        build([int(argument) for argument in arguments])
    elif mode == "hammer":
        hammer()
    elif mode == "populate":
        populate(json.loads(arguments[0]))
    else:
        sys.exit(f"unknown mode {mode!r}")
