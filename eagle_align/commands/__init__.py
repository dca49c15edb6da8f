"""The `eagle-align` subcommands, one module each: `{name}_arguments(parser)` and `{name}_command(args)`.

Each module is imported only when its subcommand runs (`eagle_align.cli`), so `eagle-align --help` stays fast.
"""
