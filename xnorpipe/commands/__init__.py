"""Subcommands of the `xnorpipe` CLI; shared flags live in options.py."""
