#!/usr/bin/env python3
"""Writes the engine target's seed inputs (programs in harness/engine.rs's
encoding) to regressions/engine/: a few hand-made scenarios, and one per
golden frame (a full-access client joins, then sends the frame raw).
The regression test replays every file there; copy them into
corpus/engine/ to seed a run."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "tests", "fixtures", "golden")
OUT = os.path.join(HERE, "regressions", "engine")


def connect(slot, kind, a, b, join=0):
    return [0, slot, kind, a, b, join]


def edit(slot, d, key, val):
    return [4, slot, d, key, val]


def sync(slot, d, mode, c=0):
    return [6, slot, d, mode, c]


def storage(k=0, n=3):
    return [14, k, n]


def tick(t, unit):
    return [16, t, unit]


def local(k, d, x):
    return [17, k, d, x]


WRITER = 2 | 8  # read/write masks from b, create right
READ_ONLY, NONE, WRITE_NO_CREATE = 1, 3, 6

SCENARIOS = {
    "writer-then-reader": [0x00, 0x00]
    + connect(0, 0, WRITER, 0xFF)
    + edit(0, 0, 1, 7) + sync(0, 0, 0) + storage() + storage() + sync(0, 0, 0) + storage()
    + connect(1, 0, READ_ONLY, 0x0F)
    + edit(1, 0, 2, 9) + sync(1, 0, 1) + storage() + sync(1, 0, 0) + storage() + sync(0, 0, 0) + storage(),
    "ungranted-request-and-ephemeral": [0x00, 0x00]
    + connect(0, 0, WRITER, 0xFF) + sync(0, 1, 0) + storage() + sync(0, 1, 0)
    + connect(2, 0, NONE, 0x00) + sync(2, 1, 4) + [12, 2, 1, 0, 1] + [12, 0, 1, 0, 2] + storage() + sync(2, 1, 1),
    "create-without-right-then-upstream": [0x00, 0x01]
    + connect(0, 0, WRITE_NO_CREATE, 0x0F) + edit(0, 2, 1, 1) + sync(0, 2, 1) + storage()
    + connect(1, 3, 0, 0) + storage() + [13, 1, 2, 0] + tick(20, 2) + storage() + sync(0, 2, 0) + storage(),
    "sync-store-full-peers": [0x40, 0x00]
    + connect(0, 0, 0, 0) + connect(1, 0, 0, 0) + edit(0, 3, 0x81, 40) + sync(0, 3, 1)
    + sync(1, 3, 0) + sync(1, 3, 0) + edit(1, 3, 2, 2) + sync(1, 3, 0) + sync(0, 3, 0),
    "local-app-evict-offload": [0x01, 0x80]
    + connect(1, 3, 0, 0) + storage() + local(0, 2, 0) + local(2, 3, 5) + storage() + local(1, 0, 3)
    + storage() + storage() + local(3, 0, 0) + storage() + tick(5, 2) + storage() + local(6, 0, 0x0F) + storage()
    + tick(5, 3) + storage(),
    "expiry-revoke-takeover": [0x00, 0x02]
    + connect(0, 0, 7 | 8, 0xFF, 0) + connect(1, 0, WRITER | 0x10, 0xFF, 0x40) + connect(2, 0, WRITER, 0xFF)
    + edit(2, 1, 0, 1) + sync(2, 1, 0) + storage() + [18, 0x01] + tick(30, 1) + storage() + [18, 0x80] + storage(),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, prog in SCENARIOS.items():
        with open(os.path.join(OUT, f"seed-{name}.bin"), "wb") as f:
            f.write(bytes(prog))
    for g in sorted(os.listdir(GOLDEN)):
        if not g.endswith(".cbor"):
            continue
        frame = open(os.path.join(GOLDEN, g), "rb").read()
        if len(frame) >= 1024:
            continue  # sync-large: fed by the Golden operation only
        prog = [0x00, 0x00] + connect(0, 0, 0, 0) + [10, 0, 0, len(frame) & 0xFF, len(frame) >> 8] + list(frame) + storage() + storage()
        with open(os.path.join(OUT, f"seed-golden-{g[:-5]}.bin"), "wb") as f:
            f.write(bytes(prog))


main()
