#!/usr/bin/env python3
"""Train a NUWA-Infinity token decoder: ``.venv/bin/python scripts/train_infinity.py --tokens T --out M``.

Imports the pack by path (the pack's ``nodes`` package must not shadow ComfyUI's ``nodes``), then
runs ``nodes/infinity/train.py``; every argument goes to it (``--help`` lists them). Multi-GPU:
``torchrun --nproc_per_node N scripts/train_infinity.py ...``.
"""
import sys

from packpath import pack_module

if __name__ == "__main__":
    pack_module("nodes.infinity.train").main(sys.argv[1:])
