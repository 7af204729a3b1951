"""Subcommands of the ``fuller`` CLI, one module each.

A command module exposes ``register(subparsers)``: it adds its parser and sets ``func`` (taking the
parsed namespace, returning an exit code) on each leaf. ``fuller.cli.COMMANDS`` lists the modules in
help order. Every command module is imported to build the parser, so it keeps heavy imports
(torch, onnxruntime, the devkit) inside its functions: ``fuller config`` must work on a
runtime-only install.
"""
