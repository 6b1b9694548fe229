"""CLI subcommands: each module has `register(subparsers)` and calls library functions."""
