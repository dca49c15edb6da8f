"""Command-line entry point (filled in by later modules)."""


def main(argv=None) -> int:
    return 0
