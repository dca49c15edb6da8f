"""What every bad-input test asserts of the command line (shared by the test modules)."""

from __future__ import annotations

from eagle_align.cli import main


def fails_in_one_line(argv: list[str], capsys, *expected: str) -> str:
    """Run the CLI in-process: it must exit 2 with one `eagle-align <cmd>: ...` line (perhaps a hint line) and no
    traceback, naming every string in `expected`. Returns the error text."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"eagle-align {argv[0]}: "))
    assert len(lines) - start <= 2 and all(line.startswith("  hint: ") for line in lines[start + 1:]), err
    assert "Traceback" not in err
    for words in expected:
        assert words in err, (words, err)
    return err
