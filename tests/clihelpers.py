"""Assertions shared by the CLI tests."""


def one_line_error(result, *fragments):
    """The command failed with exit 2 and one ``error: ...`` line on stderr holding every fragment."""
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
