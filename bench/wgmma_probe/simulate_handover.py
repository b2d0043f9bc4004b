"""Checks the producer configs' named-barrier hand-over (wgmma_probe.gemm_source, producer=True) as a two-party
event simulation: the producer warpgroup and the consumer warpgroups (in lockstep) run the barrier operations of
the kernel in program order. Fails on a deadlock, on a party arriving twice in one barrier generation (its second
arrival would count toward the current one), or on a full[s] generation pairing different slices."""
import sys


def programs(kts, stages, wait1):
    look = stages - 2 if wait1 else stages - 1
    producer = []
    for kt in range(kts):
        if kt >= stages:
            producer.append(("sync", ("empty", kt % stages), kt - stages))
        if kt >= look:
            producer.append(("arrive", ("full", (kt - look) % stages), kt - look))
    producer += [("arrive", ("full", kt % stages), kt) for kt in range(max(kts - look, 0), kts)]
    consumers = []
    for kt in range(kts):
        consumers.append(("sync", ("full", kt % stages), kt))
        done = kt - int(wait1)
        if done >= 0 and done + stages < kts:
            consumers.append(("arrive", ("empty", done % stages), done))
    return {"producer": producer, "consumers": consumers}


def check(kts, stages, wait1):
    progs = programs(kts, stages, wait1)
    pc = dict.fromkeys(progs, 0)
    arrived = {}        # barrier -> {party: slice} of the open generation
    completed = {}      # barrier -> generations completed
    blocked = {}        # party -> (barrier, generation it waits to complete)
    while True:
        moved = False
        for party, prog in progs.items():
            if party in blocked:
                barrier, gen = blocked[party]
                if completed.get(barrier, 0) <= gen:
                    continue
                del blocked[party]
            if pc[party] == len(prog):
                continue
            op, barrier, slice_ = prog[pc[party]]
            open_gen = arrived.setdefault(barrier, {})
            if party in open_gen:
                return f"{party} arrives twice in one generation of {barrier}"
            open_gen[party] = slice_
            gen = completed.get(barrier, 0)
            if len(open_gen) == len(progs):
                if len(set(open_gen.values())) != 1:
                    return f"{barrier} generation pairs slices {open_gen}"
                arrived[barrier], completed[barrier] = {}, gen + 1
            elif op == "sync":
                blocked[party] = (barrier, gen)
            pc[party] += 1
            moved = True
        if not moved:
            break
    stuck = {p: prog[pc[p] - 1] for p, prog in progs.items() if p in blocked or pc[p] < len(prog)}
    return f"deadlock at {stuck}" if stuck else None


if __name__ == "__main__":
    failures = [(kts, s, w, why) for kts in range(1, 24) for s in range(3, 8) for w in (False, True)
                if (why := check(kts, s, w))]
    print("FAIL" if failures else "PASS", "named-barrier hand-over, kts 1..23 x stages 3..7 x wait0/1:", failures[:5])
    sys.exit(bool(failures))
